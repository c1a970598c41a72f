"""Errors the platform and CLI show to users. Each says what went wrong and what to do next."""

from __future__ import annotations


class MCPAgentCloudError(Exception):
    """Base error. ``hint`` is the next step for the user; ``status`` the HTTP status when served by the API."""

    status = 400
    code = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_dict(self) -> dict[str, str]:
        out = {"error": self.code, "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        return out

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class ConfigError(MCPAgentCloudError):
    code = "config_error"


class PluginError(MCPAgentCloudError):
    code = "plugin_error"


class UnknownBackendError(PluginError):
    code = "unknown_backend"


class MissingDependencyError(PluginError):
    code = "missing_dependency"


class PackageError(MCPAgentCloudError):
    code = "invalid_package"


class AppError(MCPAgentCloudError):
    """The app directory or its config is not deployable."""

    code = "invalid_app"


class ValidationFailed(MCPAgentCloudError):
    code = "invalid_request"


class AuthError(MCPAgentCloudError):
    status = 401
    code = "unauthorized"


class ForbiddenError(MCPAgentCloudError):
    status = 403
    code = "forbidden"


class NotFoundError(MCPAgentCloudError):
    status = 404
    code = "not_found"


class ConflictError(MCPAgentCloudError):
    status = 409
    code = "conflict"


class RateLimited(MCPAgentCloudError):
    """Too many starts of a workflow with a ``rate_limit``; ``retry_after`` is in seconds."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, hint: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class TooLargeError(MCPAgentCloudError):
    status = 413
    code = "too_large"


class BuildError(MCPAgentCloudError):
    status = 500
    code = "build_failed"

    def __init__(self, message: str, *, hint: str | None = None, log_tail: str = "") -> None:
        super().__init__(message, hint=hint)
        self.log_tail = log_tail


class ApiError(MCPAgentCloudError):
    """An error answered by the platform API, raised on the client side."""

    def __init__(self, status: int, code: str, message: str, *, hint: str | None = None, data: dict | None = None):
        super().__init__(message, hint=hint)
        self.status = status
        self.code = code
        self.data = data or {}
