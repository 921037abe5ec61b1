"""``manage.py taskharbor``."""
