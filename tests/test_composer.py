"""The composer: tokens, the exact set likelihood, sampling with and without the KV cache, training
in-process and on Ray Train (with resume). All on tiny models and synthetic chorales."""

import itertools
import json
import math

import numpy as np
import pytest
import torch

from encore.composer import Composer, ComposerConfig, DataError, TrainConfig, decode, encode, fit, load_jsb
from encore.composer import tokens as T
from encore.composer.model import KVCache, positions
from encore.composer.train import epoch_batches, transposed
from encore.store import ModelStore, runs

# A I-IV-V-I cadence in C, four voices, with a passing tone and a rest: enough shape to learn.
CADENCE = [[48, 64, 67, 72], [53, 65, 69, 72], [55, 62, 67, 71], [55, 62, 65, 71], [48, 64, 67, 72], []]


pytestmark = pytest.mark.usefixtures("one_thread")


def chorale(shift: int, repeats: int = 2) -> list[list[int]]:
    return [[pitch + shift for pitch in step] for step in CADENCE * repeats]


def tiny_model(seed: int = 0, scale: float | None = None, **overrides) -> Composer:
    """A small model; ``scale`` redraws every weight from N(0, scale) so its distribution is far from uniform."""
    torch.manual_seed(seed)
    config = dict(n_layer=2, n_head=2, d_model=32, d_ff=64, dropout=0.0, max_steps=32, max_notes=4)
    model = Composer(ComposerConfig(**{**config, **overrides}))
    if scale is not None:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.normal_(0.0, scale)
    return model.eval()


def test_tokens_round_trip():
    steps = [[60, 64, 67], [], [67, 60, 64, 60], [0, 127]]
    conditions = [T.style_token(3), T.key_token(7, "major"), T.tempo_token(96), T.meter_token(3, 4)]
    tokens = encode(steps, conditions)
    assert tokens[: 1 + len(conditions)] == [T.BOS, *conditions]
    assert tokens[5:10] == [T.pitch_token(60), T.pitch_token(64), T.pitch_token(67), T.EOS_STEP, T.EOS_STEP]
    assert tokens.count(T.EOS_STEP) == len(steps)
    # A step is a set: order and repeats do not survive, the pitches do.
    assert decode(tokens) == [[60, 64, 67], [], [60, 64, 67], [0, 127]]
    assert decode(tokens + [T.pitch_token(70)]) == decode(tokens)  # an unfinished step is left out
    with pytest.raises(DataError, match="step 1"):
        encode([[60], [128]])
    with pytest.raises(ValueError, match="conditioning"):
        encode(steps, [T.EOS_STEP])


def test_vocabulary_blocks_are_disjoint_and_complete():
    blocks = {
        "pitch": [T.pitch_token(pitch) for pitch in range(128)],
        "style": [T.style_token(slot) for slot in range(T.N_STYLES)],
        "key": [T.key_token(tonic, mode) for tonic in range(12) for mode in T.MODES],
        "tempo": sorted({T.tempo_token(bpm) for bpm in range(20, 400)}),
        "meter": [T.meter_token(*meter) for meter in T.METERS] + [T.meter_token(7, 4)],
    }
    everything = [T.PAD, T.BOS, T.EOS_STEP, *itertools.chain.from_iterable(blocks.values())]
    assert sorted(everything) == list(range(T.VOCAB_SIZE))
    assert T.tempo_token(118) == T.TEMPO_OFFSET + T.TEMPO_BPMS.index(117)
    assert T.key_pitch_classes(7, "major") == {7, 9, 11, 0, 2, 4, 6}


def test_load_jsb_validates_and_names_the_bad_entry(tmp_path):
    good = {"train": [chorale(0)], "valid": [chorale(2)], "test": [[[60.0, 48], []]]}
    path = tmp_path / "jsb.json"
    path.write_text(json.dumps(good))
    splits = load_jsb(path)
    assert splits["test"] == [[[48, 60], []]]
    assert splits["train"][0] == chorale(0)

    bad = {**good, "valid": [chorale(0), [[60], [61, "x"]]]}
    path.write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"valid\[1\] step 1: 'x'"):
        load_jsb(path)
    path.write_text(json.dumps({"train": [], "valid": [], "test": []}))
    with pytest.raises(DataError, match="train"):
        load_jsb(path)


def test_positions_know_step_and_slot():
    tokens = torch.tensor([encode([[60, 64], [], [62]], [T.key_token(0, "major")]) + [T.PAD]])
    steps, slots = positions(tokens)
    #                BOS key 60 64 EOS EOS 62 EOS PAD
    assert steps.tolist() == [[0, 0, 1, 1, 1, 2, 3, 3, 0]]
    assert slots.tolist() == [[0, 0, 0, 1, 2, 0, 0, 1, 0]]


@pytest.mark.parametrize("max_notes", [2, 4])
def test_step_distribution_is_proper_over_pitch_sets(max_notes):
    """Summed over every set of at most max_notes of the 4 pitches, P(set | past) is 1."""
    model = tiny_model(scale=0.5, pitch_low=60, pitch_high=63, max_notes=max_notes)
    sets = [list(s) for size in range(max_notes + 1) for s in itertools.combinations(range(60, 64), size)]
    assert len(sets) == sum(math.comb(4, size) for size in range(max_notes + 1))
    with torch.no_grad():
        _, first_nll = model(model.pad(model.encode_steps([[step] for step in sets])))
        assert torch.exp(-first_nll.double()).sum().item() == pytest.approx(1.0, abs=1e-5)
        # The same after a given first step: probabilities of the second step, conditionally.
        past = [61, 63]
        _, past_nll = model(model.pad(model.encode_steps([[past]])))
        _, pair_nll = model(model.pad(model.encode_steps([[past, step] for step in sets])))
        assert torch.exp(-(pair_nll - past_nll).double()).sum().item() == pytest.approx(1.0, abs=1e-5)
    # nll_per_step is that NLL per step, and the distribution is far from uniform (the check has teeth).
    assert model.nll_per_step([[past, sets[3]]]) == pytest.approx(pair_nll[3].item() / 2, rel=1e-5)
    assert first_nll.max() - first_nll.min() > 1.0
    with pytest.raises(DataError, match="pitches"):
        model.encode_steps([[[60, 61, 62, 63, 64][: max_notes + 1]]])
    with pytest.raises(DataError, match="piece 1 step 0"):
        model.encode_steps([[[60]], [[59]]])


def test_training_overfits_far_below_uniform():
    data = [chorale(0), chorale(2)]
    model = tiny_model(pitch_low=40, pitch_high=90, max_notes=4)
    untrained = model.nll_per_step(data)
    # An untrained model is near uniform over the allowed tokens: about ln(51) for the first pitch alone.
    assert untrained > 10
    torch.manual_seed(0)
    state = fit(
        model, data, data, TrainConfig(epochs=60, batch_size=2, lr=1e-2, warmup_steps=5, weight_decay=0.0, transpose=0)
    )
    assert state["history"][-1]["valid_nll_per_step"] == pytest.approx(model.nll_per_step(data))
    # Only the first step is uncertain (which of the two pieces?): the floor is ln(2) / 12 steps.
    assert model.nll_per_step(data) < 0.05 * untrained
    assert state["best"]["epoch"] == min(state["history"], key=lambda m: m["valid_nll_per_step"])["epoch"]


def test_transposition_moves_pitches_and_key_within_the_model_range():
    conditions = [T.style_token(1), T.key_token(11, "minor"), T.tempo_token(90)]
    tokens = encode([[47, 62], [], [59]], conditions)
    up = T.transpose(tokens, 3)
    assert decode(up) == [[50, 65], [], [62]]
    assert up[1:4] == [T.style_token(1), T.key_token(2, "minor"), T.tempo_token(90)]  # B minor up 3: D minor
    assert T.transpose(up, -3) == tokens
    assert T.pitch_span(tokens) == (47, 62) and T.pitch_span(encode([[], []])) is None

    config = TrainConfig(transpose=6)
    model = ComposerConfig(pitch_low=45, pitch_high=70)
    rng = np.random.default_rng(0)
    shifts = {decode(transposed(tokens, (47, 62), config, model, rng))[0][0] - 47 for _ in range(300)}
    assert shifts == set(range(-2, 7))  # 47 - 2 = 45 is the lowest pitch allowed; 62 + 6 = 68 stays within 70
    assert transposed(tokens, (47, 62), TrainConfig(transpose=0), model, rng) == tokens
    with pytest.raises(ValueError, match="transpose"):
        TrainConfig(transpose=13)


def test_training_with_transposition_learns_the_piece_in_other_keys():
    # Trained on one piece in one key, a model knows that key only; with transposition it has heard
    # the piece two semitones up too (validation, never transposed, is the piece itself).
    def trained(transpose: int) -> Composer:
        model = tiny_model(pitch_low=40, pitch_high=90)
        torch.manual_seed(0)
        config = TrainConfig(epochs=40, batch_size=1, lr=1e-2, warmup_steps=5, weight_decay=0.0, transpose=transpose)
        fit(model, [chorale(0)], [chorale(0)], config)
        return model.eval()

    fixed, moved = trained(0), trained(3)
    assert moved.nll_per_step([chorale(2)]) < 0.5 * fixed.nll_per_step([chorale(2)])


def test_epoch_batches_group_similar_lengths_and_balance_ranks():
    lengths = [5, 50, 7, 30, 12, 40, 9, 22, 3, 60, 18]
    config = TrainConfig(batch_size=2)
    batches = epoch_batches(lengths, 1, config, rank=0, world_size=1)
    by_length = sorted(range(len(lengths)), key=lengths.__getitem__)
    # One pool holds all 11 pieces here, so batches are neighbours in length order, in shuffled order.
    assert sorted(batches) == sorted(by_length[start : start + 2] for start in range(0, len(lengths), 2))
    assert batches != epoch_batches(lengths, 2, config, rank=0, world_size=1)
    shares = [epoch_batches(lengths, 1, config, rank, world_size=3) for rank in range(3)]
    assert len({len(share) for share in shares}) == 1  # DDP needs the same number of steps on every rank
    assert {index for share in shares for batch in share for index in batch} == set(range(len(lengths)))


def test_kv_cache_gives_the_same_logits_and_samples():
    model = tiny_model(scale=0.3)
    tokens = torch.tensor([encode(chorale(0, repeats=1)[:4])])
    steps, slots = positions(tokens)
    with torch.no_grad():
        full = model._logits(tokens, steps, slots)
        cache = KVCache(model.config, 1, tokens.shape[1], model.device, torch.float32)
        prefix = 5
        incremental = [model._logits(tokens[:, :prefix], steps[:, :prefix], slots[:, :prefix], cache)]
        for index in range(prefix, tokens.shape[1]):
            where = slice(index, index + 1)
            incremental.append(model._logits(tokens[:, where], steps[:, where], slots[:, where], cache, start=index))
    torch.testing.assert_close(torch.cat(incremental, 1), full, atol=1e-5, rtol=1e-5)

    prompt = encode(chorale(0, repeats=1)[:2])
    for seed in (0, 1, 2):
        cached = model.generate(prompt, 12, temperature=1.2, seed=seed)
        uncached = model.generate(prompt, 12, temperature=1.2, seed=seed, use_cache=False)
        assert cached == uncached


def test_generation_obeys_the_step_grammar_and_the_key():
    model = tiny_model(scale=0.3, pitch_low=48, pitch_high=84, max_notes=4)
    prompt = encode([[60, 64, 67]])
    tokens = model.generate(prompt, 20, temperature=1.5, seed=3)
    assert tokens[: len(prompt)] == prompt and tokens[-1] == T.EOS_STEP
    steps = decode(tokens)
    assert len(steps) == 21
    assert sum(map(T.is_pitch, tokens[len(prompt) :])) > 20  # the checks below look at something
    # Ascending within each step is what decode would hide by sorting: check the raw order.
    raw, step = [], []
    for token in tokens[len(prompt) :]:
        if token == T.EOS_STEP:
            raw.append(step)
            step = []
        else:
            step.append(token - T.PITCH_OFFSET)
    assert all(s == sorted(set(s)) and len(s) <= 4 and all(48 <= p <= 84 for p in s) for s in raw)
    assert len({pitch % 12 for s in raw for pitch in s}) > 7  # unconstrained, it leaves the key

    key = T.key_pitch_classes(2, "major")  # D major
    in_key = model.generate(prompt, 20, temperature=1.5, seed=3, pitch_classes=key)
    assert {pitch % 12 for s in decode(in_key[len(prompt) :]) for pitch in s} <= key


def test_sampling_is_seeded_and_top_k_top_p_cut():
    model = tiny_model(scale=0.3)
    prompt = encode([[60, 64, 67]])
    assert model.generate(prompt, 10, seed=7) == model.generate(prompt, 10, seed=7)
    assert model.generate(prompt, 10, seed=7) != model.generate(prompt, 10, seed=8)
    greedy = model.generate(prompt, 10, top_k=1, seed=7)
    assert model.generate(prompt, 10, top_k=1, seed=8) == greedy
    assert model.generate(prompt, 10, top_p=1e-6, seed=9) == greedy
    with pytest.raises(ValueError, match="temperature"):
        model.generate(prompt, 10, temperature=0)
    with pytest.raises(ValueError, match="exceed"):
        model.generate(prompt, model.config.max_steps)


def test_save_and_load_keep_the_likelihood(tmp_path):
    model = tiny_model(scale=0.3)
    model.save(tmp_path)
    loaded = Composer.load(tmp_path)
    assert loaded.config == model.config
    assert loaded.nll_per_step([chorale(0)]) == model.nll_per_step([chorale(0)])


def test_ray_train_job_saves_a_version_and_resumes(ray_local, tmp_path):
    from encore.composer.ray_train import train_composer

    data = tmp_path / "jsb.json"
    data.write_text(
        json.dumps(
            {
                "train": [chorale(shift) for shift in (0, 2, 5, 7)],
                "valid": [chorale(3)],
                "test": [chorale(1), chorale(4)],
            }
        )
    )
    store = ModelStore(tmp_path / "store")
    model_config = ComposerConfig(n_layer=1, n_head=2, d_model=16, d_ff=32, dropout=0.0, max_steps=32, max_notes=4)
    options = dict(storage=str(tmp_path / "ray-train"), name="tiny", max_failures=0)

    first = train_composer(str(data), store.uri, model_config, TrainConfig(epochs=1, batch_size=2), **options)
    manifest = store.show(first)
    # Saved: the run is marked finished, so `encore.store gc` removes its checkpoints after retention.
    marker = tmp_path / "ray-train" / "tiny" / runs.MARKER_NAME
    assert json.loads(marker.read_text())["version"] == first
    assert manifest.kind == "composer"
    assert manifest.preprocessing == {"tokenizer": T.TOKENIZER_VERSION}
    assert manifest.metrics["starts"] == [0] and manifest.metrics["epochs"] == 1
    loaded = Composer.load(store.load(first).path)
    assert loaded.nll_per_step([chorale(1), chorale(4)]) == pytest.approx(manifest.metrics["test_nll_per_step"])

    second = store.show(
        train_composer(str(data), store.uri, model_config, TrainConfig(epochs=2, batch_size=2), **options)
    )
    # It went on from the checkpoint of epoch 1: one start after epoch 1, epoch 1 not trained again.
    assert second.metrics["starts"] == [0, 1]
    assert [epoch["epoch"] for epoch in second.metrics["history"]] == [1, 2]
    assert second.metrics["history"][0] == manifest.metrics["history"][0]
    assert json.loads(marker.read_text())["version"] == second.version


def test_a_killed_training_job_resumes_from_its_last_checkpoint(ray_local, tmp_path):
    from conftest import run_driver

    data = tmp_path / "jsb.json"
    data.write_text(
        json.dumps({"train": [chorale(s) for s in (0, 2, 5, 7)], "valid": [chorale(3)], "test": [chorale(1)]})
    )
    arguments = [
        "jobs.train_composer", "--data", str(data), "--store", str(tmp_path / "store"),
        "--storage", str(tmp_path / "ray-train"), "--name", "killed", "--epochs", "4", "--batch-size", "2",
        "--layers", "1", "--heads", "2", "--d-model", "16", "--ff", "32", "--max-steps", "32", "--max-notes", "4",
        "--max-failures", "0",
    ]  # fmt: skip
    run_driver(ray_local, arguments, until_checkpoint=tmp_path / "ray-train" / "killed")
    assert not ModelStore(tmp_path / "store").list()  # killed before it could store anything
    assert not (tmp_path / "ray-train" / "killed" / runs.MARKER_NAME).exists()  # unfinished: kept to resume

    output = run_driver(ray_local, arguments)
    manifest = ModelStore(tmp_path / "store").show("composer-latest")
    first_start, resumed_after = manifest.metrics["starts"]
    assert first_start == 0 and 1 <= resumed_after < 4, output  # went on after a finished epoch
    assert [epoch["epoch"] for epoch in manifest.metrics["history"]] == [1, 2, 3, 4]


def test_search_selects_on_validation_and_asha_stops_poor_trials(ray_local, tmp_path):
    from ray import tune

    from encore.composer.data import Corpus
    from encore.composer.search import SELECTION_METRIC, configs, search

    base_model = ComposerConfig(n_layer=1, n_head=2, d_model=16, d_ff=32, dropout=0.0, max_steps=32, max_notes=4)
    base_train = TrainConfig(epochs=4, batch_size=2, warmup_steps=2, weight_decay=0.0)
    model_config, train_config = configs({"lr": 0.01, "d_model": 32, "n_layer": 2}, base_model, base_train)
    assert (model_config.d_model, model_config.d_ff, model_config.n_layer, train_config.lr) == (32, 128, 2, 0.01)

    splits = {"train": [chorale(s) for s in (0, 2, 5, 7)], "valid": [chorale(3)], "test": [chorale(1)]}
    corpus = Corpus(splits, conditions=None, fingerprint="")
    space = {"lr": tune.grid_search([3e-2, 1e-2, 3e-3, 1e-5, 3e-6, 1e-6]), "dropout": 0.0}
    results = search(corpus, base_model, base_train, str(tmp_path / "tune"), param_space=space, num_samples=1, seed=0)
    finals = {result.config["lr"]: result.metrics for result in results}
    assert len(finals) == 6
    epochs = sorted(metrics["epoch"] for metrics in finals.values())
    assert epochs[-1] == base_train.epochs and epochs[0] < base_train.epochs, "ASHA stopped no trial early"
    best = results.get_best_result()
    assert best.metrics[SELECTION_METRIC] == min(metrics[SELECTION_METRIC] for metrics in finals.values())
    assert best.config["lr"] >= 3e-3  # a learning rate that learns something in 4 epochs
    assert "test_nll_per_step" not in best.metrics  # selection never sees test
