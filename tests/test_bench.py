"""engine.bench's summary of its targets: every target the run measured, judged the way README states it."""

from engine.bench import TARGETS, targets


def test_each_target_is_judged_in_its_own_sense_and_absent_ones_are_left_out():
    result = {
        "sweep_speedup_vs_naive": 3.9,  # at least 4
        "sweep_vs_ideal": 1.25,  # at most 1.25: on the line is met
        "toy": {"attribution_vs_forward": 1.49},
        "end_to_end": {"vit_b32": {"tls_once_vs_engine_plus_floor": {"attribute": 1.1, "sweep": 1.2}}},
    }
    judged = targets(result)
    assert set(judged) == {
        "sweep_speedup_vs_naive",
        "sweep_vs_ideal",
        "toy.attribution_vs_forward",
        "end_to_end.vit_b32.tls_once_vs_engine_plus_floor",
    }
    assert judged["sweep_speedup_vs_naive"] == {"value": 3.9, "limit": ">= 4", "met": False}
    assert judged["sweep_vs_ideal"]["met"] and judged["toy.attribution_vs_forward"]["met"]
    table = judged["end_to_end.vit_b32.tls_once_vs_engine_plus_floor"]
    assert table == {"value": 1.2, "limit": "<= 1.2", "met": True, "misses": {}}


def test_every_target_names_a_path_and_a_sense():
    for name, sense, limit in TARGETS:
        assert all(name.split(".")) and sense in ("<=", ">=") and limit > 0


def test_the_endpoints_part_alone_is_laid_out_as_in_the_full_run_and_judged(monkeypatch):
    """``--only endpoints`` puts its figures under ``end_to_end`` as the full run does, so its targets are judged
    (the part's own figures are stubbed here: serving the app takes minutes)."""
    from engine import bench, bench_endpoints

    figures = {"toy": {"tls_once_vs_floor": {"attribute": 1.1, "latent_card": 1.9}}}
    monkeypatch.setattr(bench_endpoints, "run", lambda repeats, device: figures)
    result = bench.run(repeats=1, only="endpoints")
    assert result["end_to_end"] == figures
    judged = targets(result)["end_to_end.toy.tls_once_vs_floor"]
    assert judged == {"value": 1.9, "limit": "<= 1.5", "met": False, "misses": {"latent_card": 1.9}}


def test_the_card_figure_times_a_card_with_and_without_patch_maps(workbench, tmp_path):
    from engine.bench import card_speed

    figure = card_speed(workbench, tmp_path, n_images=20, n_latents=3)
    assert figure["latents"] == 3 and figure["patch_maps"] > 0 and figure["model_run"] > 0
    assert (tmp_path / "card_index" / "manifest.json").is_file()


def test_the_engine_is_timed_after_each_endpoint_call_and_its_floor_on_the_same_image(tmp_path):
    """engine.bench_endpoints times an endpoint, the floor and the engine work behind the endpoint in the same
    seconds: the engine runs in this process right after each call and its floor, on that call's image; the
    warm-up call is left out of both figures."""
    import numpy as np

    from engine.bench_endpoints import image_files, noise_images, time_endpoints
    from engine.images import read_image

    files = image_files(tmp_path, noise_images(7, size=16))
    seen = []

    class Client:
        def predict(self, *args, api_name):
            seen.append(("floor",) if api_name == "/fill_labels" else ("call", api_name, args[0]))

    calls = {"a": lambda path, i: ((path,), "/a"), "b": lambda path, i: ((path,), "/b")}
    engine = {"a": lambda image: seen.append(("engine", np.asarray(image).copy()))}
    figures = time_endpoints(Client(), calls, iter(files), "x", repeats=2, file_arg=str, engine=engine)

    assert set(figures) == {"endpoint_ms", "floor_ms", "engine_ms"}
    assert set(figures["endpoint_ms"]) == {"a", "b"} and set(figures["engine_ms"]) == {"a"}  # b has no engine work
    for k in range(3):  # a's warm-up and two timed calls: call, floor, engine on that call's image
        call, floor, (kind, pixels) = seen[3 * k : 3 * k + 3]
        assert call == ("call", "/a", files[k]) and floor == ("floor",) and kind == "engine"
        assert np.array_equal(pixels, np.asarray(read_image(files[k])))
    assert seen[9:] == [x for k in (3, 4, 5) for x in (("call", "/b", files[k]), ("floor",))]


def test_the_tables_through_gradio_clients_defaults_are_reported_not_judged():
    """The end-to-end targets are judged with gradio_client's TLS set-up done once; with its defaults a call with
    an image pays the client's set-up once more than the floor, which no server can take away (engine.bench)."""
    tables = {"vs_floor": {"attribute": 1.96}, "tls_once_vs_floor": {"attribute": 1.1}}
    vit = {"vs_engine_plus_floor": {"steer": 1.3}, "tls_once_vs_engine_plus_floor": {"steer": 1.05}}
    judged = targets({"end_to_end": {"toy": tables, "vit_b32": vit}})
    assert set(judged) == {"end_to_end.toy.tls_once_vs_floor", "end_to_end.vit_b32.tls_once_vs_engine_plus_floor"}
    assert all(t["met"] for t in judged.values())
