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


def test_a_split_written_elsewhere_is_read_against_the_dataset_given(tiny_model, tmp_path, capsys):
    """`rsir split ROOT --out elsewhere/split.csv` then `rsir eval MODEL ROOT --split elsewhere/split.csv`: the
    paths are relative to ROOT (they were read relative to the CSV: "listed in the split but missing")."""
    from core.cli import main
    from tests.rasters import write_class_folder

    root = write_class_folder(str(tmp_path / "patches"), n_classes=3, per_class=10, size=32)
    csv_path = tmp_path / "elsewhere" / "split.csv"
    assert main(["split", root, "--out", str(csv_path)]) == 0
    raw = csv_path.read_bytes()
    assert b"\r\n" not in raw and raw.count(b"\n") == 31  # header + 30 rows, LF endings
    capsys.readouterr()
    assert main(["eval", tiny_model, root, "--split", str(csv_path), "--no-baselines", "--cache-dir", ""]) == 0
    assert "6 queries (test) -> 21 database (train)" in capsys.readouterr().out
    # read against the wrong folder, the message names both the folder used and the split file's own
    assert main(["eval", tiny_model, str(tmp_path), "--split", str(csv_path), "--no-baselines", "--cache-dir", ""]) == 1
    err = capsys.readouterr().err
    assert "listed in the split but missing (27 missing in all; the paths of" in err
    assert f"are read relative to {tmp_path}, not to the split file's folder {csv_path.parent}" in err
