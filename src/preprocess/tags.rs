//! Tile tags and the image prompt text, in the four styles of the NVLM paper
//! (arXiv 2409.11402, §4.2). Tags are plain text, not special tokens.
//!
//! The 1-D style is exactly vLLM's NVLM-D (`nvlm_d.py`): output tile `k`
//! is tagged `<tile_{k+1}>` and the thumbnail `<tile_global_thumbnail>`; a
//! single-tile image carries only the thumbnail tag. The paper's 2-D styles
//! have no released code: the grid tag is `<tile_x{col}_y{row}>` (0-based,
//! as the paper's `<tile_x0_y0>`), the box tag is
//! `<box> (left, top), (right, bottom) </box>` in pixels of the resized image.
//! In every tagged style the thumbnail is tagged `<tile_global_thumbnail>`.

use crate::preprocess::plan::TilePlan;

/// How each tile is marked in the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TileTagStyle {
    /// No tags: only the image tokens.
    None,
    /// `<tile_1>`, `<tile_2>`, …, `<tile_global_thumbnail>`: NVLM-D's choice,
    /// which scored best in the paper.
    #[default]
    OneD,
    /// `<tile_x0_y0>`, `<tile_x1_y0>`, …
    Grid2D,
    /// `<box> (0, 0), (448, 448) </box>`, …
    BoundingBox,
}

/// The thumbnail's tag in every style, as in NVLM-D's released code.
pub const THUMBNAIL_TAG: &str = "<tile_global_thumbnail>";

/// One tag per output tile of `plan`, in tensor order (empty strings for
/// [`TileTagStyle::None`]).
pub fn tile_tags(plan: &TilePlan, style: TileTagStyle) -> Vec<String> {
    if plan.num_outputs() == 1 && style == TileTagStyle::OneD {
        // vLLM tags a lone tile as the global thumbnail.
        return vec![THUMBNAIL_TAG.to_string()];
    }
    let mut tags: Vec<String> = plan
        .tiles
        .iter()
        .enumerate()
        .map(|(k, r)| match style {
            TileTagStyle::None => String::new(),
            TileTagStyle::OneD => format!("<tile_{}>", k + 1),
            TileTagStyle::Grid2D => {
                format!("<tile_x{}_y{}>", r.x / plan.tile_size, r.y / plan.tile_size)
            }
            TileTagStyle::BoundingBox => {
                format!(
                    "<box> ({}, {}), ({}, {}) </box>",
                    r.x,
                    r.y,
                    r.x + r.width,
                    r.y + r.height
                )
            }
        })
        .collect();
    if plan.thumbnail {
        tags.push(if style == TileTagStyle::None {
            String::new()
        } else {
            THUMBNAIL_TAG.to_string()
        });
    }
    tags
}

/// How the image part of a prompt is spelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptFormat {
    pub style: TileTagStyle,
    /// Text before the first tile, e.g. `<Image>`.
    pub image_start: String,
    /// Text after the last tile, e.g. `</Image>`.
    pub image_end: String,
    /// The image-token placeholder, repeated `tokens_per_tile` times per tile.
    pub placeholder: String,
    /// Image tokens per tile: 256 for a 448-px tile, patch 14, pixel-shuffle 0.5.
    pub tokens_per_tile: usize,
}

impl PromptFormat {
    /// NVLM-D as vLLM serves it: `<Image>`, 1-D tags, 256 × `<|vision_pad|>`
    /// per tile, `</Image>`.
    pub fn nvlm_d() -> PromptFormat {
        PromptFormat {
            style: TileTagStyle::OneD,
            image_start: "<Image>".into(),
            image_end: "</Image>".into(),
            placeholder: "<|vision_pad|>".into(),
            tokens_per_tile: 256,
        }
    }

    /// InternVL2/2.5 chat: `<img>`, no tags, 256 × `<IMG_CONTEXT>` per tile, `</img>`.
    pub fn internvl() -> PromptFormat {
        PromptFormat {
            style: TileTagStyle::None,
            image_start: "<img>".into(),
            image_end: "</img>".into(),
            placeholder: "<IMG_CONTEXT>".into(),
            tokens_per_tile: 256,
        }
    }

    /// The text that stands for the image of `plan` in the prompt.
    pub fn image_text(&self, plan: &TilePlan) -> String {
        let tokens = self.placeholder.repeat(self.tokens_per_tile);
        let mut text = self.image_start.clone();
        for tag in tile_tags(plan, self.style) {
            text.push_str(&tag);
            text.push_str(&tokens);
        }
        text.push_str(&self.image_end);
        text
    }
}

impl Default for PromptFormat {
    fn default() -> Self {
        PromptFormat::nvlm_d()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::plan::DhrConfig;

    fn plan(w: u32, h: u32) -> TilePlan {
        TilePlan::new(w, h, &DhrConfig::NVLM_D).unwrap()
    }

    #[test]
    fn one_d_tags_match_vllm() {
        let p = plan(1344, 896); // 3x2 grid + thumbnail
        assert_eq!(
            tile_tags(&p, TileTagStyle::OneD),
            [
                "<tile_1>",
                "<tile_2>",
                "<tile_3>",
                "<tile_4>",
                "<tile_5>",
                "<tile_6>",
                "<tile_global_thumbnail>"
            ]
        );
        assert_eq!(
            tile_tags(&plan(448, 448), TileTagStyle::OneD),
            ["<tile_global_thumbnail>"]
        );
    }

    #[test]
    fn two_d_tags_name_column_and_row() {
        let p = plan(1344, 896);
        let grid = tile_tags(&p, TileTagStyle::Grid2D);
        assert_eq!(
            grid[..4],
            [
                "<tile_x0_y0>",
                "<tile_x1_y0>",
                "<tile_x2_y0>",
                "<tile_x0_y1>"
            ]
        );
        assert_eq!(grid[6], THUMBNAIL_TAG);
        let boxes = tile_tags(&p, TileTagStyle::BoundingBox);
        assert_eq!(boxes[4], "<box> (448, 448), (896, 896) </box>");
        assert_eq!(tile_tags(&p, TileTagStyle::None), vec![String::new(); 7]);
    }

    #[test]
    fn nvlm_d_prompt_text() {
        let fmt = PromptFormat {
            tokens_per_tile: 2,
            placeholder: "<p>".into(),
            ..PromptFormat::nvlm_d()
        };
        assert_eq!(
            fmt.image_text(&plan(896, 448)),
            "<Image><tile_1><p><p><tile_2><p><p><tile_global_thumbnail><p><p></Image>"
        );
        let full = PromptFormat::nvlm_d().image_text(&plan(1344, 896));
        assert_eq!(full.matches("<|vision_pad|>").count(), 7 * 256);
    }
}
