from imgclf.lineage import data_hash, project_root


def test_project_root_found_from_subfolder(tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    assert project_root(sub) == tmp_path.resolve()


def test_project_root_from_dvc_temp_experiment_copy(tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    copy = tmp_path / "proj" / ".dvc" / "tmp" / "exps" / "tmpabc123"
    copy.mkdir(parents=True)
    (copy / "dvc.yaml").write_text("stages: {}\n")
    assert project_root(copy) == (tmp_path / "proj").resolve()


def test_dvc_root_env_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert project_root(tmp_path / "elsewhere") == tmp_path.resolve()


def test_data_hash_reads_data_dvc(tmp_path):
    (tmp_path / "data.dvc").write_text("outs:\n- md5: abc.dir\n  path: data\n")
    assert data_hash(tmp_path / "data.dvc") == "abc.dir"
    assert data_hash(tmp_path / "missing.dvc") == "unknown"
