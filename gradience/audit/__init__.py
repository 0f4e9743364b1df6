"""gradience.audit"""
