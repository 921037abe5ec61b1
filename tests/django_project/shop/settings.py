"""Settings of the test shop: PostgreSQL from TASKHARBOR_TEST_POSTGRES, in schema SHOP_SCHEMA."""

import os
from urllib.parse import urlsplit

URL = os.environ.get("TASKHARBOR_TEST_POSTGRES", "postgresql://root@127.0.0.1:5432/test")
SCHEMA = os.environ.get("SHOP_SCHEMA", "shop")
_url = urlsplit(URL)

SECRET_KEY = "test-only"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["taskharbor.contrib.django", "shop"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _url.path.lstrip("/"),
        "USER": _url.username or "",
        "PASSWORD": _url.password or "",
        "HOST": _url.hostname or "",
        "PORT": _url.port or "",
        "OPTIONS": {"options": f"-c search_path={SCHEMA}"},
    }
}
TASKHARBOR_APP = "shop.tasks:app"
