"""gradience.ranks"""
