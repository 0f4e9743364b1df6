"""gradience.tasks"""
