from tests.workflows.conftest import comment_workflow  # noqa: F401
