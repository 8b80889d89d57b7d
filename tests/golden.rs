//! Parity with the real Python pipeline (Pillow 12.3.0 and 13.0.0, InternVL's
//! `dynamic_preprocess`, torchvision arithmetic) on the committed corpus,
//! through hashes committed by `scripts/pillow_reference.py golden`. Needs no
//! Python.

mod common;

use common::decode::decode_file;
use common::{fixture_dir, sha256_hex};
use nvlm_vision::preprocess::{DhrConfig, Grid, ImageView, PillowVersion, Preprocessor};
use serde_json::Value;

fn check_against(golden_file: &str, pillow: PillowVersion) {
    let dir = fixture_dir();
    let text = std::fs::read_to_string(dir.join(golden_file)).expect("golden file");
    let golden: Value = serde_json::from_str(&text).unwrap();
    let images = golden["images"].as_object().unwrap();
    assert!(
        images.len() >= 20,
        "corpus shrank to {} images",
        images.len()
    );
    let mut mismatches = Vec::new();
    let mut checked = 0;
    for (name, expected) in images {
        let decoded = decode_file(&dir.join("images").join(name)).unwrap();
        let view = ImageView::packed(
            &decoded.pixels,
            decoded.width,
            decoded.height,
            decoded.format,
        )
        .unwrap();
        assert_eq!(
            [decoded.width, decoded.height],
            [
                expected["size"][0].as_u64().unwrap() as u32,
                expected["size"][1].as_u64().unwrap() as u32
            ]
        );
        assert_eq!(
            sha256_hex(&view.to_rgb()),
            expected["decoded_rgb_sha256"].as_str().unwrap(),
            "{name}: decoded pixels differ from Pillow's decoder"
        );
        for (config_name, want) in expected["configs"].as_object().unwrap() {
            let c = &golden["configs"][config_name];
            let config = DhrConfig {
                tile_size: 448,
                min_tiles: c["min_tiles"].as_u64().unwrap() as u32,
                max_tiles: c["max_tiles"].as_u64().unwrap() as u32,
                thumbnail: c["thumbnail"].as_bool().unwrap(),
            };
            let pre = Preprocessor {
                config,
                pillow,
                ..Default::default()
            };
            let (plan, tiles) = pre.tiles_rgb(&view).unwrap();
            let want_grid = Grid {
                cols: want["grid"][0].as_u64().unwrap() as u32,
                rows: want["grid"][1].as_u64().unwrap() as u32,
            };
            assert_eq!(plan.grid, want_grid, "{name} {config_name}: grid");
            assert_eq!(
                plan.num_outputs() as u64,
                want["outputs"].as_u64().unwrap(),
                "{name} {config_name}"
            );
            let tensor = pre.run::<f32>(&view).unwrap().data;
            let got = (
                sha256_hex(&tiles),
                sha256_hex(bytemuck::cast_slice(&tensor)),
            );
            let wanted = (
                want["tiles_u8_sha256"].as_str().unwrap(),
                want["tensor_f32_sha256"].as_str().unwrap(),
            );
            if got.0 != wanted.0 || got.1 != wanted.1 {
                mismatches.push(format!(
                    "{name} {config_name}: u8 {} f32 {}",
                    got.0 == wanted.0,
                    got.1 == wanted.1
                ));
            }
            checked += 1;
        }
    }
    assert!(
        mismatches.is_empty(),
        "{pillow:?}: {} of {checked} differ (u8 ok?, f32 ok?):\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn corpus_matches_pillow_12() {
    check_against("golden_pillow12.json", PillowVersion::V12);
}

#[test]
fn corpus_matches_pillow_13() {
    check_against("golden_pillow13.json", PillowVersion::V13);
}
