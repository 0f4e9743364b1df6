"""gradience.evaluate"""
