"""gradience.experiment"""
