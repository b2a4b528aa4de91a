//! `PythonRandom` against CPython's `random.Random` (vectors from scripts/make_python_random_fixture.py).

use editbench_datasets::rng::PythonRandom;
use serde_json::Value;

fn fixture() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/python_random.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn getrandbits_matches_cpython() {
    for case in fixture()["words"].as_array().unwrap() {
        let mut r = PythonRandom::new(case["seed"].as_u64().unwrap());
        let words: Vec<u64> = (0..8).map(|_| r.getrandbits(32) as u64).collect();
        let expected: Vec<u64> =
            case["words"].as_array().unwrap().iter().map(|w| w.as_u64().unwrap()).collect();
        assert_eq!(words, expected, "seed {}", case["seed"]);
    }
}

#[test]
fn shuffle_matches_cpython() {
    for case in fixture()["shuffles"].as_array().unwrap() {
        let n = case["n"].as_u64().unwrap() as usize;
        let mut items: Vec<u64> = (0..n as u64).collect();
        PythonRandom::new(case["seed"].as_u64().unwrap()).shuffle(&mut items);
        let expected: Vec<u64> =
            case["first"].as_array().unwrap().iter().map(|w| w.as_u64().unwrap()).collect();
        assert_eq!(items[..expected.len()], expected[..], "seed {} n {n}", case["seed"]);
    }
}

/// The vector: the reference's FixedRandomSubsetSampler order of the 10,033 paragraphs.
#[test]
fn the_reference_paragraph_order_starts_as_published() {
    let mut items: Vec<usize> = (0..10_033).collect();
    PythonRandom::new(1).shuffle(&mut items);
    assert_eq!(items[..10], [5820, 5297, 5591, 7577, 9552, 6372, 563, 1527, 4713, 6346]);
}
