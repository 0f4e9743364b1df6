"""gradience.stats"""
