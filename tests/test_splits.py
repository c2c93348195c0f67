"""The split protocol of the shared EuroSAT split.csv, on a synthetic folder-per-class dataset."""
import random

from training.splits import make_split, read_split, write_split


def test_split_protocol(tmp_path):
    for cls, n in (("Forest", 20), ("River", 10)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            (tmp_path / cls / f"{cls}_{i}.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("ignored")
    rows = make_split(str(tmp_path))
    forest = [r for r in rows if r["class"] == "Forest"]
    assert [sum(r["split"] == s for r in forest) for s in ("train", "val", "test")] == [14, 2, 4]
    river = [r for r in rows if r["class"] == "River"]
    assert [sum(r["split"] == s for r in river) for s in ("train", "val", "test")] == [7, 1, 2]
    names = sorted(f"Forest_{i}.jpg" for i in range(20))
    random.Random(42).shuffle(names)
    assert [r["path"] for r in forest] == [f"Forest/{n}" for n in names]  # sorted, then seeded shuffle
    write_split(rows, str(tmp_path / "split.csv"))
    assert read_split(str(tmp_path / "split.csv")) == rows and make_split(str(tmp_path)) == rows
