"""A relevance-feedback session on disk (JSON): the original query and every round's marks and hits, so a command
line user can continue where they stopped (`rsir search IDX --session S.json --positive ... --negative ...`)."""
from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field

import numpy as np

from .errors import RsirError
from .feedback import Marks
from .fileio import read_json, write_json
from .queries import Query

KIND = "rsir.feedback_session"


@dataclass
class Example:
    """A marked example that is not a tile of the index (an image file): its vectors, kept in the session."""

    source: str
    relevant: bool
    embedding: np.ndarray
    code: np.ndarray

    def to_dict(self) -> dict:
        return {"source": self.source, "relevant": self.relevant, "embedding": self.embedding.round(6).tolist(),
                "code": self.code.tobytes().hex()}

    @classmethod
    def from_dict(cls, d: dict) -> Example:
        return cls(d["source"], bool(d["relevant"]), np.asarray(d["embedding"], np.float32),
                   np.frombuffer(bytes.fromhex(d["code"]), np.uint8).copy())


@dataclass
class Round:
    method: str
    positives: list[int]            # tile ids marked relevant in this round
    negatives: list[int]
    examples: list[Example] = field(default_factory=list)
    hits: list[int] = field(default_factory=list)
    at: str = ""


@dataclass
class Session:
    index: str
    query: Query
    rounds: list[Round] = field(default_factory=list)
    hits: list[int] = field(default_factory=list)  # round 0's: the query's own

    def marked(self) -> tuple[list[int], list[int], list[Example]]:
        """Every round's marks; a tile marked again takes its latest mark."""
        mark: dict[int, bool] = {}
        examples: list[Example] = []
        for r in self.rounds:
            mark.update({t: True for t in r.positives})
            mark.update({t: False for t in r.negatives})
            examples += r.examples
        return [t for t, ok in mark.items() if ok], [t for t, ok in mark.items() if not ok], examples

    def marks(self, index) -> Marks:
        pos, neg, examples = self.marked()
        marks = Marks.from_index(index, pos, neg)
        for e in examples:
            marks = marks.add(e.embedding, e.code, e.relevant)
        return marks

    def add_round(self, method: str, positives, negatives, examples, hits) -> Round:
        r = Round(method, sorted(set(int(t) for t in positives)), sorted(set(int(t) for t in negatives)),
                  list(examples), [int(h) for h in hits],
                  _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
        self.rounds.append(r)
        return r

    def save(self, path: str) -> None:
        q = self.query
        write_json(path, {
            "type": KIND, "index": self.index,
            "query": {"kind": q.kind, "description": q.description, "tile_id": q.tile_id,
                      "footprint_wkt": q.footprint_wkt, "embedding": q.embedding.round(6).tolist(),
                      "code": q.code.tobytes().hex()},
            "hits": self.hits,
            "rounds": [{"method": r.method, "positives": r.positives, "negatives": r.negatives,
                        "examples": [e.to_dict() for e in r.examples], "hits": r.hits, "at": r.at}
                       for r in self.rounds]})

    @classmethod
    def load(cls, path: str) -> Session:
        try:
            d = read_json(path)
            if d.get("type") != KIND:
                raise ValueError(f"not a {KIND} file")
            q = d["query"]
            query = Query(q["kind"], q["description"], np.asarray(q["embedding"], np.float32),
                          np.frombuffer(bytes.fromhex(q["code"]), np.uint8).copy(), tile_id=q.get("tile_id"),
                          footprint_wkt=q.get("footprint_wkt"))
            rounds = [Round(r["method"], list(r["positives"]), list(r["negatives"]),
                            [Example.from_dict(e) for e in r.get("examples", [])], list(r.get("hits", [])),
                            r.get("at", "")) for r in d["rounds"]]
            return cls(d["index"], query, rounds, list(d.get("hits", [])))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RsirError(f"{path}: not a readable feedback session ({exc})") from None

    def check_index(self, index_dir: str, path: str) -> None:
        if os.path.abspath(index_dir) != os.path.abspath(self.index):
            raise RsirError(f"{path}: is a session on index {self.index}, not {os.path.abspath(index_dir)}")
