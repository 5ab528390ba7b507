from django.apps import AppConfig


class ResilienceConfig(AppConfig):
    name = "resilience"
