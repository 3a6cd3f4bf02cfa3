"""Tests of cowmix_jax/data/splits.py: seeded and class-balanced subsets, id files, CLI."""

import json

import numpy as np
import pytest

from cowmix_jax.data import splits

IDS = [f"img_{i:03d}" for i in range(100)]


def test_labelled_subset_is_a_seeded_random_choice():
  a = splits.choose_labelled(IDS, 10, seed=0)
  assert a == splits.choose_labelled(IDS, 10, seed=0)
  assert a != splits.choose_labelled(IDS, 10, seed=1)
  assert a != IDS[:10], "not the first N"
  assert len(set(a)) == 10 and a == sorted(a)
  assert splits.choose_labelled(IDS[:7], -1, seed=0) == IDS[:7]
  # The same draw as a numpy permutation of the sorted ids with the seed (independent check).
  expected = sorted(IDS[i] for i in np.random.default_rng([0, 1]).permutation(100)[:10])
  assert a == expected


def test_asking_for_too_many_labelled_images_says_so():
  with pytest.raises(ValueError, match="num_labelled=101.*100 training images"):
    splits.choose_labelled(IDS, 101, seed=0)


def test_class_balanced_subset_covers_rare_classes():
  rng = np.random.default_rng(0)
  histograms = np.zeros((100, 5), np.int64)  # 4 classes + ignore
  histograms[:, 0] = 1000
  histograms[rng.random(100) < 0.5, 1] = 100
  histograms[rng.random(100) < 0.3, 2] = 100
  histograms[[13, 77], 3] = 5  # a class in only two images
  random_hits = sum("img_013" in s or "img_077" in s
                    for s in (splits.choose_labelled(IDS, 4, seed) for seed in range(50)))
  assert random_hits < 25, "a random draw of 4 mostly misses the rare class"
  for seed in range(10):
    chosen = splits.choose_labelled(IDS, 4, seed, histograms, class_balanced=True)
    present = histograms[[IDS.index(i) for i in chosen], :4] > 0
    assert present.any(axis=0).all(), (seed, chosen)
  assert (splits.choose_labelled(IDS, 4, 0, histograms, class_balanced=True) !=
          splits.choose_labelled(IDS, 4, 1, histograms, class_balanced=True))


def test_id_files_text_and_json(tmp_path):
  (tmp_path / "a.txt").write_text("img_001\n# a comment\nimg_005  # trailing\n\n")
  assert splits.read_id_file(str(tmp_path / "a.txt")) == ["img_001", "img_005"]
  splits.write_id_file(str(tmp_path / "b.json"), ["img_001", "img_005"], seed=3)
  assert json.loads((tmp_path / "b.json").read_text())["seed"] == 3
  assert splits.read_id_file(str(tmp_path / "b.json")) == ["img_001", "img_005"]
  (tmp_path / "c.json").write_text('["img_002"]')
  assert splits.read_id_file(str(tmp_path / "c.json")) == ["img_002"]


def test_bad_id_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothere.txt"):
    splits.read_id_file(str(tmp_path / "nothere.txt"))
  (tmp_path / "d.json").write_text('{"ids": [1, 2]}')
  with pytest.raises(ValueError, match="d.json: expected a JSON list of image id strings"):
    splits.read_id_file(str(tmp_path / "d.json"))
  (tmp_path / "e.txt").write_text("img_001\nimg_001\n")
  with pytest.raises(ValueError, match="e.txt: ids listed more than once: \\['img_001'\\]"):
    splits.read_id_file(str(tmp_path / "e.txt"))
  with pytest.raises(ValueError, match="f.txt: 1 id\\(s\\) are not in the training split"):
    splits.check_ids_exist(["img_999"], IDS, "f.txt")


def test_histogram_table_by_hand():
  histograms = np.array([[30, 10, 0, 5], [10, 0, 0, 0]])  # 3 classes + ignore
  table = splits.histogram_table(histograms, ["a", "b", "c"]).splitlines()
  assert table[1].split() == ["a", "80.00", "2"]
  assert table[2].split() == ["b", "20.00", "1"]
  assert table[3].split() == ["c", "0.00", "0"]
  assert "9.09" in table[4]  # 5 ignored of 55 pixels


def test_cli_generate_inspect_compare(tmp_path, synthetic_builder, capsys, monkeypatch):
  from cowmix_jax.data import builders

  monkeypatch.setattr(builders, "prepare", lambda data: synthetic_builder)
  common = ["--dataset=synthetic", "--data_dir=unused"]
  assert splits.main(["generate", *common, "--num=5", "--seed=2",
                      f"--output={tmp_path / 'a.json'}"]) == 0
  assert splits.main(["generate", *common, "--num=5", "--seed=2",
                      f"--output={tmp_path / 'b.txt'}"]) == 0
  assert splits.main(["generate", *common, "--num=5", "--seed=3", "--class_balanced",
                      f"--output={tmp_path / 'c.json'}"]) == 0
  out = capsys.readouterr().out
  assert "5 labelled images of 24" in out and "background" in out
  ids = splits.read_id_file(str(tmp_path / "a.json"))
  all_ids = [f"train_{i:05d}" for i in range(24)]
  assert ids == splits.choose_labelled(all_ids, 5, 2)
  assert splits.main(["inspect", str(tmp_path / "b.txt"), *common]) == 0
  capsys.readouterr()
  # A split file of the field's layout is imported into an id file of ours...
  (tmp_path / "labeled.txt").write_text("".join(f"images/{i}.png labels/{i}.png\n"
                                                for i in ids))
  assert splits.main(["inspect", str(tmp_path / "labeled.txt"), *common,
                      f"--output={tmp_path / 'imported.json'}"]) == 0
  assert "5 ids, 5 of them in synthetic/train" in capsys.readouterr().out
  assert splits.read_id_file(str(tmp_path / "imported.json")) == ids
  # ... and one naming images the dataset does not have is reported, exit status 1.
  (tmp_path / "other.txt").write_text("images/train_00001.png x\nimages/2007_000033.jpg x\n")
  assert splits.main(["inspect", str(tmp_path / "other.txt"), *common,
                      f"--output={tmp_path / 'not.json'}"]) == 1
  out = capsys.readouterr().out
  assert "2 ids, 1 of them" in out and "['2007_000033']" in out
  assert not (tmp_path / "not.json").exists()
  assert splits.main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.txt")]) == 0
  assert json.loads(capsys.readouterr().out)["identical"] is True
  assert splits.main(["compare", str(tmp_path / "a.json"), str(tmp_path / "c.json")]) == 1
  result = json.loads(capsys.readouterr().out)
  other = splits.read_id_file(str(tmp_path / "c.json"))
  assert result["only_a"] == sorted(set(ids) - set(other))
  assert result["common"] == len(set(ids) & set(other))


def test_split_files_of_the_field_name_the_ids_of_the_fixture_trees(tmp_path):
  # UniMatch / U2PL / CPS list image-label path pairs; the ids are the image names.
  from test_data_cityscapes import write_tree as write_cityscapes
  from test_data_voc import write_tree as write_voc
  voc = sorted(write_voc(tmp_path / "voc"))
  cityscapes = sorted(write_cityscapes(tmp_path / "cityscapes"))
  (tmp_path / "voc.txt").write_text(
      "".join(f"JPEGImages/{i}.jpg SegmentationClass/{i}.png\n" for i in voc[:2]))
  city = [i for i in cityscapes if i.startswith("aachen")]
  (tmp_path / "cs.txt").write_text("".join(
      f"leftImg8bit/train/aachen/{i}_leftImg8bit.png gtFine/train/aachen/{i}_gtFine_"
      f"labelTrainIds.png\n" for i in city))
  assert splits.read_id_file(str(tmp_path / "voc.txt")) == voc[:2]
  assert splits.read_id_file(str(tmp_path / "cs.txt")) == city
  assert splits.id_of_line("img_001") == "img_001"
  assert splits.id_of_line("0001TP_006690.png") == "0001TP_006690"
