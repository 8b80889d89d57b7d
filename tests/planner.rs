//! The tile planner against InternVL's Python rule: committed results
//! (no Python needed) and, where the pinned Python is present, a live
//! exhaustive comparison.

mod common;

use common::{fixture_dir, pillow_python, run_reference, sha256_hex};
use nvlm_vision::preprocess::{DhrConfig, MAX_TILES_LIMIT, TilePlan, candidate_grids};

fn config(min_tiles: u32, max_tiles: u32) -> DhrConfig {
    DhrConfig {
        tile_size: 448,
        min_tiles,
        max_tiles,
        thumbnail: true,
    }
}

/// `(cols, rows)` bytes for every size `1..=side` squared, `w` outer, as
/// `pillow_reference.py grids` prints them.
fn grid_bytes(min_tiles: u32, max_tiles: u32, side: u32) -> Vec<u8> {
    let cfg = config(min_tiles, max_tiles);
    let mut out = Vec::with_capacity((side * side * 2) as usize);
    for w in 1..=side {
        for h in 1..=side {
            let g = TilePlan::new(w, h, &cfg).unwrap().grid;
            out.extend([g.cols as u8, g.rows as u8]);
        }
    }
    out
}

#[test]
fn every_size_to_1024_matches_committed_python_hashes() {
    // `python scripts/pillow_reference.py grids 1 N 1024 | sha256sum`
    assert_eq!(
        sha256_hex(&grid_bytes(1, 6, 1024)),
        "a3012269f3099d00cea5207285923ab8a562b7ea7bd654b7237b2e8507bb89df",
        "max 6: run planner_matches_python_live to see which size differs"
    );
    assert_eq!(
        sha256_hex(&grid_bytes(1, 12, 1024)),
        "128724854d380c8b58ee1d2d6fd73808e80b4d08b97119542d024a46c88a6539",
        "max 12: run planner_matches_python_live to see which size differs"
    );
}

#[test]
fn sampled_and_tie_sizes_to_8192_match_committed_table() {
    let text = std::fs::read_to_string(fixture_dir().join("grid_table.txt")).unwrap();
    let configs = [config(1, 6), config(1, 12), config(2, 4)];
    let mut rows = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let v: Vec<u32> = line
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        for (k, cfg) in configs.iter().enumerate() {
            let g = TilePlan::new(v[0], v[1], cfg).unwrap().grid;
            assert_eq!(
                (g.cols, g.rows),
                (v[2 + 2 * k], v[3 + 2 * k]),
                "{}x{} {cfg:?}",
                v[0],
                v[1]
            );
        }
        rows += 1;
    }
    assert!(rows > 8000, "table has only {rows} rows");
}

#[test]
fn planner_matches_python_live() {
    let Some(python) = pillow_python(12, "planner_matches_python_live") else {
        return;
    };
    // Candidate order for every config the planner accepts.
    let orders: serde_json::Value = serde_json::from_slice(&run_reference(
        &python,
        &["ratios-all", &MAX_TILES_LIMIT.to_string()],
    ))
    .unwrap();
    for hi in 1..=MAX_TILES_LIMIT {
        for lo in 1..=hi {
            let want: Vec<(u32, u32)> =
                serde_json::from_value(orders[format!("{lo},{hi}")].clone()).unwrap();
            let got: Vec<(u32, u32)> = candidate_grids(lo, hi)
                .iter()
                .map(|g| (g.cols, g.rows))
                .collect();
            assert_eq!(got, want, "candidate order for min {lo} max {hi}");
        }
    }
    // Every size up to 1024, for the published limits.
    for (lo, hi) in [(1, 6), (1, 12)] {
        let want = run_reference(
            &python,
            &["grids", &lo.to_string(), &hi.to_string(), "1024"],
        );
        let got = grid_bytes(lo, hi, 1024);
        if let Some(i) =
            (0..got.len() / 2).find(|&i| got[2 * i..2 * i + 2] != want[2 * i..2 * i + 2])
        {
            let (w, h) = (i / 1024 + 1, i % 1024 + 1);
            panic!(
                "max {hi}: {w}x{h} gives {:?}, Python {:?}",
                &got[2 * i..2 * i + 2],
                &want[2 * i..2 * i + 2]
            );
        }
    }
}
