"""A Django app over the policy tests' shop tables (managed elsewhere), for ORM-under-policy tests."""
