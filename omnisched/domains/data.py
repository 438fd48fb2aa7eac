"""User domains: prompts from a JSONL / JSON / parquet / CSV file, loaded with HF datasets.

Every column other than the prompt travels to the reward as a keyword argument (TRL style).
A prompt is a string, or a list of `{role, content}` messages rendered with the model's chat
template (`omnisched.domains.chat`); the messages then reach the reward as the `messages` column.
The eval set is `eval_path` if given, else the last `eval_size` rows (after a seeded shuffle).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from omnisched.config.schema import DomainConfig
from omnisched.domains.base import Domain, Example, check_options, option
from omnisched.domains.chat import ChatTemplate, check_messages, completion_text, is_conversational
from omnisched.errors import ConfigError, DataError

FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def load_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a local data file as dicts; a clear DataError names the file on any problem."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    builder = FORMATS.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"{path}: unsupported data format; use one of {sorted(FORMATS)}")
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:  # datasets raises many types for malformed files
        raise DataError(f"{path}: cannot read as {builder}: {' '.join(str(exc).split())}") from exc
    return [dict(row) for row in ds]


class DataDomain(Domain):
    """Options: `path` (required), `eval_path`, `prompt_field` (default `prompt`),
    `completion_field` (reference completions for the warm start), `kind` (structured|open)."""

    def __init__(self, cfg: DomainConfig, seed: int, chat: ChatTemplate | None = None) -> None:
        self.name, self.chat = cfg.name, chat or ChatTemplate(None)
        check_options(cfg, {"path", "eval_path", "prompt_field", "completion_field", "kind"})
        if "path" not in cfg.options:
            raise ConfigError(f"domain '{cfg.name}' (type data): options.path is required")
        if not cfg.reward:
            raise ConfigError(f"domain '{cfg.name}' (type data): a reward must be given")
        self.prompt_field = option(cfg, "prompt_field", "prompt", str)
        self.completion_field = option(cfg, "completion_field", "", str) or None
        self.kind = option(cfg, "kind", "structured", str)  # type: ignore[assignment]
        if self.kind not in ("structured", "open"):
            raise ConfigError(f"domain '{cfg.name}': options.kind must be structured or open")
        rows = load_rows(cfg.options["path"])
        self._train = self._to_examples(rows, cfg.options["path"])
        if "eval_path" in cfg.options:
            self._eval = self._to_examples(
                load_rows(cfg.options["eval_path"]), cfg.options["eval_path"]
            )
        else:
            random.Random(seed).shuffle(self._train)
            if len(self._train) <= cfg.eval_size:
                raise DataError(
                    f"{cfg.options['path']}: {len(self._train)} rows cannot hold out "
                    f"eval_size={cfg.eval_size} and still train; lower eval_size or give eval_path"
                )
            self._eval = self._train[-cfg.eval_size :]
            self._train = self._train[: -cfg.eval_size]
        super().__init__(cfg, seed)

    def _to_examples(self, rows: list[dict[str, Any]], source: str) -> list[Example]:
        if self.completion_field and rows and self.completion_field not in rows[0]:
            raise DataError(
                f"domain '{self.name}': {source}: options.completion_field "
                f"'{self.completion_field}' is not a column; columns: {', '.join(rows[0])}"
            )
        return [self._example(row, source, i) for i, row in enumerate(rows)]

    def _example(self, row: dict[str, Any], source: str, i: int) -> Example:
        """One row as an Example; a conversational prompt is rendered with the chat template."""
        where = f"domain '{self.name}': {source}: row {i}"
        if row.get(self.prompt_field) is None:
            raise DataError(f"{where} has no '{self.prompt_field}' field")
        prompt = row[self.prompt_field]
        columns = {k: v for k, v in row.items() if k != self.prompt_field}
        demo = None
        if self.completion_field:
            field = f"{where}: {self.completion_field}"
            demo = completion_text(row.get(self.completion_field), field)
        if is_conversational(prompt):
            messages = check_messages(prompt, f"{where}: {self.prompt_field}")
            columns["messages"] = messages
            prompt = self.chat.render(messages, where)
        return Example(f"{source}:{i}", str(prompt), columns, demo)

    def _build_eval_set(self, size: int) -> list[Example]:
        return self._eval[:size]

    def sample(self, rng: random.Random) -> Example:
        return rng.choice(self._train)
