"""gradience.report"""
