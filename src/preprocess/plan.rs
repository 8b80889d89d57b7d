//! InternVL's dynamic-high-resolution (DHR) tile planner.
//!
//! The grid is chosen exactly as `find_closest_aspect_ratio` in InternVL's
//! `dynamic_preprocess` does (NVLM and vLLM use the same code): candidates in
//! the order Python's `sorted(set(...), key=i*j)` produces, ratio distances in
//! f64, and the area tie-break. The order inside one tile count is the
//! iteration order of a CPython set, which [`candidate_grids`] reproduces.

use crate::error::{Error, Result};

/// Largest accepted image side, in pixels. Keeps every index and fixed-point
/// sum well inside `i32`/`u32` and refuses decompression-bomb sizes early.
pub const MAX_SIDE: u32 = 1 << 20;
/// Largest accepted pixel count (2^28, above Pillow's own bomb limit of ~179 M).
pub const MAX_PIXELS: u64 = 1 << 28;
/// Largest accepted `max_tiles`; published models use 6 or 12.
pub const MAX_TILES_LIMIT: u32 = 64;
/// Largest accepted tile side.
pub const MAX_TILE_SIZE: u32 = 2048;

/// How an image is cut into tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DhrConfig {
    /// Side of a square tile in pixels (448 for InternViT-448px).
    pub tile_size: u32,
    /// Fewest tiles in the grid (thumbnail not counted).
    pub min_tiles: u32,
    /// Most tiles in the grid (thumbnail not counted).
    pub max_tiles: u32,
    /// Append a `tile_size`² resize of the whole image when the grid has more
    /// than one tile.
    pub thumbnail: bool,
}

impl DhrConfig {
    /// NVLM-D: 1..=6 tiles of 448 px plus the thumbnail (at most 7 tiles).
    pub const NVLM_D: DhrConfig = DhrConfig {
        tile_size: 448,
        min_tiles: 1,
        max_tiles: 6,
        thumbnail: true,
    };
    /// InternVL2/2.5 chat: 1..=12 tiles of 448 px plus the thumbnail.
    pub const INTERNVL_CHAT: DhrConfig = DhrConfig {
        tile_size: 448,
        min_tiles: 1,
        max_tiles: 12,
        thumbnail: true,
    };

    /// Checks the config against the limits above.
    pub fn validate(&self) -> Result<()> {
        if self.tile_size == 0 || self.tile_size > MAX_TILE_SIZE {
            return Err(Error::InvalidConfig(format!(
                "tile_size {} is outside 1..={MAX_TILE_SIZE}",
                self.tile_size
            )));
        }
        if self.min_tiles == 0 || self.min_tiles > self.max_tiles {
            return Err(Error::InvalidConfig(format!(
                "min_tiles {} must be at least 1 and at most max_tiles {}",
                self.min_tiles, self.max_tiles
            )));
        }
        if self.max_tiles > MAX_TILES_LIMIT {
            return Err(Error::InvalidConfig(format!(
                "max_tiles {} is above the limit {MAX_TILES_LIMIT}",
                self.max_tiles
            )));
        }
        Ok(())
    }
}

impl Default for DhrConfig {
    fn default() -> Self {
        DhrConfig::NVLM_D
    }
}

/// A tile grid: `cols` tiles across, `rows` tiles down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Grid {
    pub cols: u32,
    pub rows: u32,
}

impl Grid {
    pub fn tiles(&self) -> u32 {
        self.cols * self.rows
    }
}

/// A rectangle in pixels, `[x, x + width) × [y, y + height)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// Where each output tile of the DHR tensor comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TilePlan {
    /// Original image size (width, height).
    pub image: (u32, u32),
    pub tile_size: u32,
    pub grid: Grid,
    /// Size the image is resized to before cutting: (cols·tile, rows·tile).
    pub resized: (u32, u32),
    /// Tile rectangles inside the resized image, row-major.
    pub tiles: Vec<Rect>,
    /// Whether a `tile_size`² resize of the original image follows the tiles.
    pub thumbnail: bool,
}

impl TilePlan {
    /// Plans the tiles for a `width`×`height` image.
    pub fn new(width: u32, height: u32, config: &DhrConfig) -> Result<TilePlan> {
        check_image_size(width, height)?;
        config.validate()?;
        let grid = closest_grid(width, height, config);
        let t = config.tile_size;
        let tiles = (0..grid.tiles())
            .map(|k| Rect {
                x: (k % grid.cols) * t,
                y: (k / grid.cols) * t,
                width: t,
                height: t,
            })
            .collect();
        Ok(TilePlan {
            image: (width, height),
            tile_size: t,
            grid,
            resized: (grid.cols * t, grid.rows * t),
            tiles,
            thumbnail: config.thumbnail && grid.tiles() > 1,
        })
    }

    /// Tiles in the output tensor, the thumbnail included.
    pub fn num_outputs(&self) -> usize {
        self.tiles.len() + usize::from(self.thumbnail)
    }

    /// Elements of the `[num_outputs, 3, tile, tile]` tensor.
    pub fn tensor_len(&self) -> usize {
        self.num_outputs() * 3 * (self.tile_size as usize).pow(2)
    }

    /// The `[T, 3, tile, tile]` shape of the output tensor.
    pub fn tensor_shape(&self) -> [usize; 4] {
        let t = self.tile_size as usize;
        [self.num_outputs(), 3, t, t]
    }
}

/// Rejects sizes the crate does not process: zero, or past the limits above.
pub fn check_image_size(width: u32, height: u32) -> Result<()> {
    let err = |reason| {
        Err(Error::InvalidImageSize {
            width: width.into(),
            height: height.into(),
            reason,
        })
    };
    if width == 0 || height == 0 {
        return err("width and height must be at least 1");
    }
    if width > MAX_SIDE || height > MAX_SIDE {
        return err("a side is larger than MAX_SIDE (1048576)");
    }
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return err("more pixels than MAX_PIXELS (2^28)");
    }
    Ok(())
}

/// The grid InternVL's `find_closest_aspect_ratio` picks. `config` must be
/// valid and the size non-zero.
fn closest_grid(width: u32, height: u32, config: &DhrConfig) -> Grid {
    let aspect = f64::from(width) / f64::from(height);
    let area = u128::from(width) * u128::from(height);
    let tile_area = u128::from(config.tile_size).pow(2);
    let mut best_diff = f64::INFINITY;
    let mut best = Grid { cols: 1, rows: 1 };
    for grid in candidate_grids(config.min_tiles, config.max_tiles) {
        let diff = (aspect - f64::from(grid.cols) / f64::from(grid.rows)).abs();
        if diff < best_diff {
            best_diff = diff;
            best = grid;
        } else if diff == best_diff && 2 * area > tile_area * u128::from(grid.tiles()) {
            // Python: `area > 0.5 * image_size**2 * i * j`; int-vs-float
            // comparison is exact there, and so is this integer form.
            best = grid;
        }
    }
    best
}

/// InternVL's `target_ratios` in Python's order:
/// `sorted({(i, j) for n in range(min, max+1) for i in 1..=n for j in 1..=n
/// if min <= i*j <= max}, key=lambda x: x[0]*x[1])`.
///
/// `sorted` is stable, so grids with the same tile count keep the set's
/// iteration order, which decides exact ties. That order is reproduced by
/// a private model of CPython's set of tuples in this module.
pub fn candidate_grids(min_tiles: u32, max_tiles: u32) -> Vec<Grid> {
    let mut set = PySetOfPairs::new();
    for n in min_tiles..=max_tiles {
        for i in 1..=n {
            for j in 1..=n {
                if (min_tiles..=max_tiles).contains(&(i * j)) {
                    set.add(i, j);
                }
            }
        }
    }
    let mut grids: Vec<Grid> = set.iter().map(|(cols, rows)| Grid { cols, rows }).collect();
    grids.sort_by_key(Grid::tiles); // stable, as Python's sort
    grids
}

/// CPython's (3.8+, 64-bit) `set` of `(int, int)` tuples, only as far as
/// needed to reproduce its iteration order: the tuple hash, open addressing
/// with linear probes then perturbed jumps, and table growth.
struct PySetOfPairs {
    /// `(hash, (i, j))` per slot, `None` when empty. No deletions, so no dummies.
    table: Vec<Option<(u64, (u32, u32))>>,
    used: usize,
}

impl PySetOfPairs {
    const MIN_SIZE: usize = 8;
    const LINEAR_PROBES: usize = 9;
    const PERTURB_SHIFT: u32 = 5;

    fn new() -> Self {
        PySetOfPairs {
            table: vec![None; Self::MIN_SIZE],
            used: 0,
        }
    }

    /// `hash((i, j))` as CPython's xxHash-based `tuplehash`; small ints hash to themselves.
    fn tuple_hash(i: u32, j: u32) -> u64 {
        const P1: u64 = 11400714785074694791;
        const P2: u64 = 14029467366897019727;
        const P5: u64 = 2870177450012600261;
        let mut acc = P5;
        for lane in [u64::from(i), u64::from(j)] {
            acc = acc.wrapping_add(lane.wrapping_mul(P2));
            acc = acc.rotate_left(31);
            acc = acc.wrapping_mul(P1);
        }
        acc = acc.wrapping_add(2 ^ (P5 ^ 3527539));
        if acc == u64::MAX { 1546275796 } else { acc }
    }

    /// The slot CPython's probe sequence reaches first that is empty or holds `key`.
    fn find_slot(table: &[Option<(u64, (u32, u32))>], hash: u64, key: (u32, u32)) -> usize {
        let mask = table.len() - 1;
        let mut perturb = hash;
        let mut i = (hash as usize) & mask;
        loop {
            let probes = if i + Self::LINEAR_PROBES <= mask {
                Self::LINEAR_PROBES
            } else {
                0
            };
            for (slot, entry) in table.iter().enumerate().skip(i).take(probes + 1) {
                match *entry {
                    None => return slot,
                    Some((h, k)) if h == hash && k == key => return slot,
                    Some(_) => {}
                }
            }
            perturb >>= Self::PERTURB_SHIFT;
            i = (i
                .wrapping_mul(5)
                .wrapping_add(1)
                .wrapping_add(perturb as usize))
                & mask;
        }
    }

    fn add(&mut self, i: u32, j: u32) {
        let hash = Self::tuple_hash(i, j);
        let slot = Self::find_slot(&self.table, hash, (i, j));
        if self.table[slot].is_some() {
            return;
        }
        self.table[slot] = Some((hash, (i, j)));
        self.used += 1;
        let mask = self.table.len() - 1;
        // No deletions happen, so CPython's `fill` equals `used`.
        if self.used * 5 >= mask * 3 {
            self.resize(if self.used > 50000 {
                self.used * 2
            } else {
                self.used * 4
            });
        }
    }

    /// `set_table_resize`: the smallest power of two above `min_used`,
    /// re-inserting the old entries in table order.
    fn resize(&mut self, min_used: usize) {
        let mut size = Self::MIN_SIZE;
        while size <= min_used {
            size <<= 1;
        }
        let old = std::mem::replace(&mut self.table, vec![None; size]);
        for (hash, key) in old.into_iter().flatten() {
            let slot = Self::find_slot(&self.table, hash, key);
            self.table[slot] = Some((hash, key));
        }
    }

    fn iter(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.table.iter().flatten().map(|&(_, key)| key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(grids: &[Grid]) -> Vec<(u32, u32)> {
        grids.iter().map(|g| (g.cols, g.rows)).collect()
    }

    #[test]
    fn candidate_order_matches_cpython_for_published_configs() {
        // Printed by CPython 3.11 for the InternVL expression.
        assert_eq!(
            pairs(&candidate_grids(1, 6)),
            [
                (1, 1),
                (1, 2),
                (2, 1),
                (3, 1),
                (1, 3),
                (4, 1),
                (1, 4),
                (2, 2),
                (1, 5),
                (5, 1),
                (6, 1),
                (2, 3),
                (1, 6),
                (3, 2)
            ]
        );
        assert_eq!(
            pairs(&candidate_grids(1, 12))[..20],
            [
                (1, 1),
                (1, 2),
                (2, 1),
                (3, 1),
                (1, 3),
                (2, 2),
                (4, 1),
                (1, 4),
                (5, 1),
                (1, 5),
                (1, 6),
                (6, 1),
                (3, 2),
                (2, 3),
                (7, 1),
                (1, 7),
                (4, 2),
                (2, 4),
                (1, 8),
                (8, 1)
            ]
        );
    }

    #[test]
    fn reference_examples() {
        let cfg12 = DhrConfig::INTERNVL_CHAT;
        assert_eq!(
            TilePlan::new(1000, 1000, &cfg12).unwrap().grid,
            Grid { cols: 3, rows: 3 }
        );
        assert_eq!(
            TilePlan::new(448, 448, &cfg12).unwrap().grid,
            Grid { cols: 1, rows: 1 }
        );
        assert_eq!(
            TilePlan::new(3000, 1500, &cfg12).unwrap().grid,
            Grid { cols: 4, rows: 2 }
        );
    }

    #[test]
    fn tiles_are_row_major_and_thumbnail_only_with_several_tiles() {
        let plan = TilePlan::new(3000, 1500, &DhrConfig::INTERNVL_CHAT).unwrap();
        assert_eq!(plan.resized, (1792, 896));
        assert_eq!(
            plan.tiles[1],
            Rect {
                x: 448,
                y: 0,
                width: 448,
                height: 448
            }
        );
        assert_eq!(
            plan.tiles[4],
            Rect {
                x: 0,
                y: 448,
                width: 448,
                height: 448
            }
        );
        assert!(plan.thumbnail);
        assert_eq!(plan.tensor_shape(), [9, 3, 448, 448]);
        let single = TilePlan::new(448, 448, &DhrConfig::INTERNVL_CHAT).unwrap();
        assert!(!single.thumbnail);
        assert_eq!(single.num_outputs(), 1);
    }

    #[test]
    fn rejects_bad_sizes_and_configs() {
        let cfg = DhrConfig::NVLM_D;
        for (w, h) in [(0, 10), (10, 0), (MAX_SIDE + 1, 1), (1 << 15, 1 << 15)] {
            let err = TilePlan::new(w, h, &cfg).unwrap_err();
            assert!(
                matches!(err, Error::InvalidImageSize { .. }),
                "{w}x{h}: {err}"
            );
        }
        for bad in [
            DhrConfig {
                tile_size: 0,
                ..cfg
            },
            DhrConfig {
                tile_size: MAX_TILE_SIZE + 1,
                ..cfg
            },
            DhrConfig {
                min_tiles: 0,
                ..cfg
            },
            DhrConfig {
                min_tiles: 7,
                max_tiles: 6,
                ..cfg
            },
            DhrConfig {
                max_tiles: MAX_TILES_LIMIT + 1,
                ..cfg
            },
        ] {
            let err = TilePlan::new(100, 100, &bad).unwrap_err();
            assert!(
                err.to_string().starts_with("invalid DHR config"),
                "{bad:?}: {err}"
            );
        }
    }
}
