"""One check's outcome, shared by every verify module."""

from __future__ import annotations

from dataclasses import dataclass

PASS, FAIL, WARN = "PASS", "FAIL", "WARN"


@dataclass(frozen=True)
class Result:
    status: str
    check: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status} {self.check}: {self.detail}"
        return f"{text} [fix: {self.fix}]" if self.fix and self.status != PASS else text

    def as_json(self) -> dict[str, str]:
        return {"name": self.check, "status": self.status, "detail": self.detail, "fix": self.fix}
