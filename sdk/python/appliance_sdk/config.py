"""An instance's configuration: the ``key=value`` pairs the operator gave it, with helpers
whose errors say what to fix."""

from typing import Dict, Iterable, List, Optional, Tuple, Union


class ConfigError(ValueError):
    """A configuration the plugin rejects; the message is shown to the operator."""


class Config:
    def __init__(self, pairs: Union[Iterable[Tuple[str, str]], Dict[str, str]] = ()):
        items = pairs.items() if isinstance(pairs, dict) else pairs
        self._pairs: List[Tuple[str, str]] = [(str(k), str(v)) for k, v in items]

    def pairs(self) -> List[Tuple[str, str]]:
        return list(self._pairs)

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        """The last value given for ``key`` (a later pair overrides an earlier one)."""
        for k, v in reversed(self._pairs):
            if k == key:
                return v
        return default

    def require(self, key: str, what: str) -> str:
        value = self.get(key)
        if value is None or value == "":
            raise ConfigError(f"`{key}` is required: {what}")
        return value

    def only(self, keys: Iterable[str]) -> None:
        """Rejects keys the plugin does not take, naming those it does."""
        known = list(keys)
        unknown = sorted({k for k, _ in self._pairs if k not in known})
        if unknown:
            raise ConfigError(
                f"unknown key(s) {', '.join(unknown)}; this plugin takes: {', '.join(known)}"
            )

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        text = self.get(key)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"`{key}` = {text!r} is not a whole number") from None
        if not low <= value <= high:
            raise ConfigError(f"`{key}` = {value} is outside {low}..={high}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        text = self.get(key)
        if text is None:
            return default
        if text in ("true", "false"):
            return text == "true"
        raise ConfigError(f"`{key}` is true or false, not {text!r}")
