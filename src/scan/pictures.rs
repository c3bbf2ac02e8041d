//! Pictures of a scan's recovered triggers, and the triggers as `.npy` files
//! that `ibau eval --trigger` replays. Written after the scan, from what
//! [`super::Recovered::for_class`] returns.
//!
//! For class `c` of the model `stem`, [`write`] writes into one folder:
//! - `{stem}.class{c}.trigger.png`: the trigger, min-max scaled to `[0, 1]`
//!   (a constant one is mid grey), enlarged by a whole factor so that its
//!   shorter side is at least 224 pixels;
//! - `{stem}.class{c}.strip.png`: the clean images above the same images with
//!   the trigger applied, each with its predicted class written under it; a
//!   triggered image predicted as `c` is framed in red;
//! - `{stem}.class{c}.trigger.npy`: the trigger, float32 `[C, H, W]`;
//! - for the mask form, `{stem}.class{c}.mask.npy` (float32 `[H, W]`) and
//!   `{stem}.class{c}.pattern.npy` (float32 `[C, H, W]`), which
//!   `--trigger mask:pattern=P.npy,mask=M.npy` reads back.
//!
//! Pictures are RGB for three channels and grey otherwise (the mean of the
//! channels for two or more than three). Every file is written with
//! [`write_atomic`].

use std::io;
use std::path::{Path, PathBuf};

use image::{imageops, DynamicImage, GrayImage, ImageFormat, Luma, Rgb, RgbImage};
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::WriteNpyExt;
use tch::{Device, Kind, Tensor};

use crate::error::{bail, Result};
use crate::outputs::{write_atomic, Inputs, OutputError};

/// One class's recovered trigger and what it does to the held-back images.
pub struct TriggerPictures<'a> {
    /// The model's name in the file names (no folder).
    pub stem: &'a str,
    pub class: i64,
    /// `"additive"` or `"mask"`.
    pub form: &'a str,
    /// `[C, H, W]`: the additive perturbation, or mask times pattern.
    pub trigger: &'a Tensor,
    /// The mask form's mask, `[1, H, W]` (or `[H, W]`), values in `[0, 1]`.
    pub mask: Option<&'a Tensor>,
    /// The mask form's pattern, `[C, H, W]`.
    pub pattern: Option<&'a Tensor>,
    /// `[N, C, H, W]` in `[0, 1]`, and the same images with the trigger.
    pub clean: &'a Tensor,
    pub triggered: &'a Tensor,
    /// The model's predictions on `clean` and on `triggered`.
    pub clean_predictions: &'a [i64],
    pub predictions: &'a [i64],
}

/// The shorter side of the trigger picture, and of each strip tile, is at
/// least this many pixels.
const TRIGGER_SIDE: usize = 224;
const TILE_SIDE: usize = 112;
/// No enlarged side grows past this: a long thin image is enlarged less.
const MAX_SIDE: usize = 4096;
/// White space around the strip's tiles.
const GAP: u32 = 4;
/// The red frame's width: half the gap, so two neighbours' frames never meet.
const FRAME: u32 = GAP / 2;
const RED: Rgb<u8> = Rgb([220, 0, 0]);
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
/// Glyphs are 3x5 cells of `FONT_SCALE` pixels, a blank cell column apart.
const FONT_SCALE: u32 = 3;
const GLYPH_W: u32 = 3 * FONT_SCALE;
const GLYPH_H: u32 = 5 * FONT_SCALE;
/// The label band under a tile: the digits with a gap above and below.
const LABEL_H: u32 = GLYPH_H + 2 * GAP;

/// Writes the pictures and `.npy` files of `p` into `dir`; returns their
/// paths in the order written.
pub fn write(dir: &Path, p: &TriggerPictures, inputs: &Inputs) -> Result<Vec<PathBuf>> {
    let shape = check(p)?;
    let trigger = Planes::of(p.trigger)?;
    let mut written = Vec::new();
    let mut put = |what: &str, encoded: io::Result<Vec<u8>>| -> Result<()> {
        let path = dir.join(format!("{}.class{}.{what}", p.stem, p.class));
        if let Some(input) = inputs.clash(&path) {
            return Err(OutputError::Refused {
                path,
                reason: format!("it is {input}; choose another --save-triggers folder"),
            }
            .into());
        }
        let bytes = encoded.map_err(|source| OutputError::Write {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &bytes)?;
        written.push(path);
        Ok(())
    };
    put("trigger.png", png(&trigger_picture(&trigger)))?;
    let clean = Planes::batch(p.clean)?;
    let triggered = Planes::batch(p.triggered)?;
    let strip = strip(
        &clean,
        &triggered,
        p.clean_predictions,
        p.predictions,
        p.class,
    );
    put("strip.png", png(&DynamicImage::ImageRgb8(strip)))?;
    let [c, h, w] = shape;
    put("trigger.npy", npy(trigger.values, &[c, h, w]))?;
    if let (Some(mask), Some(pattern)) = (p.mask, p.pattern) {
        put("mask.npy", npy(Planes::of_mask(mask)?.values, &[h, w]))?;
        put("pattern.npy", npy(Planes::of(pattern)?.values, &[c, h, w]))?;
    }
    Ok(written)
}

/// Checks the shapes, predictions and form of `p`; returns `[C, H, W]`.
fn check(p: &TriggerPictures) -> Result<[usize; 3]> {
    if p.stem.is_empty() || p.stem.contains('/') || p.stem == "." || p.stem == ".." {
        bail!("trigger pictures: `{}` is not a file name stem", p.stem);
    }
    let &[c, h, w] = p.trigger.size().as_slice() else {
        bail!(
            "trigger pictures of class {}: the trigger is {:?}, not [C, H, W]",
            p.class,
            p.trigger.size()
        );
    };
    let n = p.clean.size().first().copied().unwrap_or(0);
    let images = [n, c, h, w];
    for (what, t) in [("clean", p.clean), ("triggered", p.triggered)] {
        if t.size() != images || n == 0 {
            bail!(
                "trigger pictures of class {}: the {what} images are {:?}; expected [N, {c}, {h}, {w}] \
                 with N = {n} > 0",
                p.class,
                t.size()
            );
        }
    }
    for (what, predictions) in [("clean", p.clean_predictions), ("triggered", p.predictions)] {
        if predictions.len() as i64 != n {
            bail!(
                "trigger pictures of class {}: {} {what} predictions for {n} images",
                p.class,
                predictions.len()
            );
        }
    }
    match (p.form, p.mask, p.pattern) {
        ("additive", None, None) => {}
        ("mask", Some(mask), Some(pattern)) => {
            let m = mask.size();
            if !(m == [1, h, w] || m == [h, w]) || pattern.size() != [c, h, w] {
                bail!(
                    "trigger pictures of class {}: mask {m:?} and pattern {:?}; expected [1, {h}, {w}] \
                     and [{c}, {h}, {w}]",
                    p.class,
                    pattern.size()
                );
            }
        }
        (form, mask, pattern) => bail!(
            "trigger pictures of class {}: form `{form}` with mask {} and pattern {} (expected \
             `additive` with neither, or `mask` with both)",
            p.class,
            if mask.is_some() { "given" } else { "absent" },
            if pattern.is_some() { "given" } else { "absent" }
        ),
    }
    Ok([c as usize, h as usize, w as usize])
}

/// A float `[C, H, W]` picture on the CPU.
struct Planes {
    values: Vec<f32>,
    c: usize,
    h: usize,
    w: usize,
}

impl Planes {
    /// A `[C, H, W]` tensor.
    fn of(t: &Tensor) -> Result<Planes> {
        let &[c, h, w] = t.size().as_slice() else {
            bail!("expected a [C, H, W] tensor, got {:?}", t.size());
        };
        let values = Vec::<f32>::try_from(
            &t.f_to_device(Device::Cpu)?
                .f_to_kind(Kind::Float)?
                .f_contiguous()?
                .f_view([-1])?,
        )?;
        Ok(Planes {
            values,
            c: c as usize,
            h: h as usize,
            w: w as usize,
        })
    }

    /// A `[1, H, W]` or `[H, W]` mask.
    fn of_mask(t: &Tensor) -> Result<Planes> {
        let s = t.size();
        Planes::of(&t.f_reshape([1, s[s.len() - 2], s[s.len() - 1]])?)
    }

    /// Each image of an `[N, C, H, W]` tensor.
    fn batch(t: &Tensor) -> Result<Vec<Planes>> {
        (0..t.size()[0])
            .map(|i| Planes::of(&t.f_select(0, i)?))
            .collect()
    }

    fn at(&self, channel: usize, y: usize, x: usize) -> f32 {
        self.values[(channel * self.h + y) * self.w + x]
    }

    /// The grey level at `(y, x)`: the mean of the channels.
    fn grey(&self, y: usize, x: usize) -> f32 {
        (0..self.c).map(|k| self.at(k, y, x)).sum::<f32>() / self.c.max(1) as f32
    }

    /// The picture enlarged `factor` times, nearest neighbour, each value
    /// turned into a level by `level`: RGB for 3 channels, grey otherwise.
    fn enlarged(&self, factor: usize, level: impl Fn(f32) -> u8) -> DynamicImage {
        let (w, h) = ((self.w * factor) as u32, (self.h * factor) as u32);
        let source = |x: u32, y: u32| (y as usize / factor, x as usize / factor);
        if self.c == 3 {
            DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
                let (y, x) = source(x, y);
                Rgb([0, 1, 2].map(|k| level(self.at(k, y, x))))
            }))
        } else {
            DynamicImage::ImageLuma8(GrayImage::from_fn(w, h, |x, y| {
                let (y, x) = source(x, y);
                Luma([level(self.grey(y, x))])
            }))
        }
    }
}

/// The whole factor that brings the shorter side of an `h`x`w` picture to
/// at least `side` pixels, held back so the longer stays within `MAX_SIDE`.
fn factor(h: usize, w: usize, side: usize) -> usize {
    let (short, long) = (h.min(w).max(1), h.max(w).max(1));
    side.div_ceil(short).min(MAX_SIDE / long).max(1)
}

/// A value in `[0, 1]` as a level; out of range is clipped.
fn unit_level(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// The trigger, min-max scaled over all its channels, enlarged.
fn trigger_picture(trigger: &Planes) -> DynamicImage {
    let finite = trigger.values.iter().copied().filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let k = factor(trigger.h, trigger.w, TRIGGER_SIDE);
    if hi - lo > f32::EPSILON * hi.abs().max(1.0) {
        trigger.enlarged(k, |v| unit_level((v - lo) / (hi - lo)))
    } else {
        trigger.enlarged(k, |_| 128)
    }
}

/// Where the strip's tiles go.
struct StripLayout {
    tile_w: u32,
    tile_h: u32,
    factor: usize,
}

impl StripLayout {
    fn new(h: usize, w: usize) -> StripLayout {
        let factor = factor(h, w, TILE_SIDE);
        StripLayout {
            tile_w: (w * factor) as u32,
            tile_h: (h * factor) as u32,
            factor,
        }
    }

    /// The strip's width and height for `n` images a row.
    fn size(&self, n: usize) -> (u32, u32) {
        (
            GAP + n as u32 * (self.tile_w + GAP),
            GAP + 2 * (self.tile_h + LABEL_H),
        )
    }

    /// The top-left corner of image `i`'s tile in row 0 (clean) or 1
    /// (triggered).
    fn tile(&self, row: u32, i: usize) -> (u32, u32) {
        (
            GAP + i as u32 * (self.tile_w + GAP),
            GAP + row * (self.tile_h + LABEL_H),
        )
    }
}

/// The clean images over the triggered ones, labelled with their
/// predictions; triggered images predicted as `class` framed in red.
fn strip(
    clean: &[Planes],
    triggered: &[Planes],
    clean_predictions: &[i64],
    predictions: &[i64],
    class: i64,
) -> RgbImage {
    let layout = StripLayout::new(clean[0].h, clean[0].w);
    let (width, height) = layout.size(clean.len());
    let mut canvas = RgbImage::from_pixel(width, height, WHITE);
    let rows = [(clean, clean_predictions), (triggered, predictions)];
    for (row, (images, labels)) in (0u32..).zip(rows) {
        for (i, (image, &label)) in images.iter().zip(labels).enumerate() {
            let (x, y) = layout.tile(row, i);
            if row == 1 && label == class {
                let (fw, fh) = (layout.tile_w + 2 * FRAME, layout.tile_h + 2 * FRAME);
                fill(&mut canvas, x - FRAME, y - FRAME, fw, fh, RED);
            }
            let tile = image.enlarged(layout.factor, unit_level).to_rgb8();
            imageops::replace(&mut canvas, &tile, x.into(), y.into());
            let centre = x + layout.tile_w / 2;
            draw_text(
                &mut canvas,
                &label.to_string(),
                centre,
                y + layout.tile_h + GAP,
            );
        }
    }
    canvas
}

/// Fills a rectangle, clipped to the canvas.
fn fill(canvas: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, colour: Rgb<u8>) {
    let (x_end, y_end) = ((x + w).min(canvas.width()), (y + h).min(canvas.height()));
    for yy in y..y_end {
        for xx in x..x_end {
            canvas.put_pixel(xx, yy, colour);
        }
    }
}

/// The 3x5 glyph of a digit or `-`: one row a byte, the leftmost cell in
/// bit 2.
fn glyph(ch: char) -> Option<[u8; 5]> {
    Some(match ch {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b001, 0b001, 0b001],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        '-' => [0b000, 0b000, 0b111, 0b000, 0b000],
        _ => return None,
    })
}

/// Draws `text` in black, centred on `centre`, its top at `top`; what does
/// not fit the canvas is clipped, characters without a glyph are skipped.
fn draw_text(canvas: &mut RgbImage, text: &str, centre: u32, top: u32) {
    let advance = GLYPH_W + FONT_SCALE;
    let width = (text.chars().count() as u32 * advance).saturating_sub(FONT_SCALE);
    let left = centre.saturating_sub(width / 2);
    for (k, ch) in (0u32..).zip(text.chars()) {
        let Some(rows) = glyph(ch) else { continue };
        for (r, bits) in (0u32..).zip(rows) {
            for col in 0..3u32 {
                if bits & (0b100 >> col) != 0 {
                    let (x, y) = (left + k * advance + col * FONT_SCALE, top + r * FONT_SCALE);
                    fill(canvas, x, y, FONT_SCALE, FONT_SCALE, BLACK);
                }
            }
        }
    }
}

fn png(picture: &DynamicImage) -> io::Result<Vec<u8>> {
    let mut bytes = io::Cursor::new(Vec::new());
    picture
        .write_to(&mut bytes, ImageFormat::Png)
        .map_err(io::Error::other)?;
    Ok(bytes.into_inner())
}

/// `values` as a float32 `.npy` array of `shape`.
fn npy(values: Vec<f32>, shape: &[usize]) -> io::Result<Vec<u8>> {
    let array = ArrayD::from_shape_vec(IxDyn(shape), values).map_err(io::Error::other)?;
    let mut bytes = Vec::new();
    array.write_npy(&mut bytes).map_err(io::Error::other)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Trigger;

    const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

    /// `n` grey `[n, c, h, w]` images and a trigger in the top-left corner.
    fn images(n: i64, c: i64, h: i64, w: i64) -> (Tensor, Tensor) {
        let clean = Tensor::full([n, c, h, w], 0.5, CPU);
        let trigger = Tensor::zeros([c, h, w], CPU);
        let _ = trigger.narrow(1, 0, 3).narrow(2, 0, 3).fill_(0.4);
        let triggered = clean.f_add(&trigger).unwrap();
        (trigger, triggered)
    }

    fn pictures<'a>(
        trigger: &'a Tensor,
        clean: &'a Tensor,
        triggered: &'a Tensor,
        clean_predictions: &'a [i64],
        predictions: &'a [i64],
    ) -> TriggerPictures<'a> {
        TriggerPictures {
            stem: "net",
            class: 7,
            form: "additive",
            trigger,
            mask: None,
            pattern: None,
            clean,
            triggered,
            clean_predictions,
            predictions,
        }
    }

    fn red_pixels(strip: &RgbImage) -> usize {
        strip.pixels().filter(|p| **p == RED).count()
    }

    #[test]
    fn grey_pictures_have_their_sizes_and_frames_where_the_class_is_predicted() {
        let dir = tempfile::tempdir().unwrap();
        let clean = Tensor::full([3, 1, 28, 28], 0.5, CPU);
        let (trigger, triggered) = images(3, 1, 28, 28);
        let predictions = [7, 2, 7];
        let p = pictures(&trigger, &clean, &triggered, &[1, 2, -1], &predictions);
        let written = write(dir.path(), &p, &Inputs::default()).unwrap();
        let names: Vec<_> = written.iter().map(|w| w.file_name().unwrap()).collect();
        assert_eq!(
            names,
            [
                "net.class7.trigger.png",
                "net.class7.strip.png",
                "net.class7.trigger.npy"
            ]
        );

        let picture = image::open(&written[0]).unwrap();
        assert_eq!((picture.width(), picture.height()), (224, 224));
        assert_eq!(picture.color(), image::ColorType::L8);
        let picture = picture.to_luma8();
        // Min-max scaled: the corner patch is white, the rest black.
        assert_eq!(picture.get_pixel(0, 0).0, [255]);
        assert_eq!(picture.get_pixel(23, 23).0, [255]);
        assert_eq!(picture.get_pixel(24, 24).0, [0]);

        let strip = image::open(&written[1]).unwrap().to_rgb8();
        // Tiles of 28 x 4 = 112, 4 px apart; 23 px label bands.
        assert_eq!(strip.dimensions(), (4 + 3 * 116, 4 + 2 * (112 + 23)));
        let layout = StripLayout::new(28, 28);
        for (i, &predicted) in predictions.iter().enumerate() {
            let (x, y) = layout.tile(1, i);
            let framed = predicted == 7;
            for (fx, fy) in [
                (x - 1, y + 56),
                (x + 112, y + 56),
                (x + 56, y - 1),
                (x + 56, y + 112),
            ] {
                assert_eq!(
                    *strip.get_pixel(fx, fy) == RED,
                    framed,
                    "tile {i} at {fx},{fy}"
                );
            }
            // Every tile, clean and triggered, has digits under it.
            for row in 0..2 {
                let (x, y) = layout.tile(row, i);
                let mut band =
                    (x..x + 112).flat_map(|xx| (y + 112..y + 135).map(move |yy| (xx, yy)));
                assert!(band.any(|(xx, yy)| *strip.get_pixel(xx, yy) == BLACK));
            }
        }
        // Red is only in the two frames.
        assert_eq!(red_pixels(&strip), 2 * (116 * 116 - 112 * 112));
        // The triggered tile shows the trigger: 0.9 in its corner, 0.5 elsewhere.
        let (x, y) = layout.tile(1, 1);
        let corner = unit_level(triggered.double_value(&[1, 0, 0, 0]) as f32);
        assert_eq!(strip.get_pixel(x, y).0, [corner; 3]);
        assert_eq!(strip.get_pixel(x + 50, y + 50).0, [128; 3]);

        let npy: ndarray::Array3<f32> = ndarray_npy::read_npy(&written[2]).unwrap();
        assert_eq!(npy.shape(), [1, 28, 28]);
        assert_eq!(npy[[0, 2, 2]], 0.4);
        assert_eq!(npy[[0, 3, 3]], 0.0);
    }

    #[test]
    fn rgb_pictures_and_a_constant_trigger() {
        let dir = tempfile::tempdir().unwrap();
        let clean = Tensor::rand([2, 3, 20, 30], CPU);
        let trigger = Tensor::full([3, 20, 30], 0.3, CPU);
        let triggered = clean.f_add(&trigger).unwrap().clamp(0.0, 1.0);
        let p = pictures(&trigger, &clean, &triggered, &[0, 1], &[3, 4]);
        let written = write(dir.path(), &p, &Inputs::default()).unwrap();
        let picture = image::open(&written[0]).unwrap();
        // 20 x 12 = 240 >= 224 on the shorter side.
        assert_eq!((picture.width(), picture.height()), (360, 240));
        assert_eq!(picture.color(), image::ColorType::Rgb8);
        assert!(picture.to_rgb8().pixels().all(|p| p.0 == [128; 3]));
        let strip = image::open(&written[1]).unwrap().to_rgb8();
        // 20 x 6 = 120 >= 112: tiles of 180 x 120.
        assert_eq!(strip.dimensions(), (4 + 2 * 184, 4 + 2 * (120 + 23)));
        assert_eq!(red_pixels(&strip), 0);
        let (x, y) = StripLayout::new(20, 30).tile(0, 1);
        let expected = [0, 1, 2].map(|k| unit_level(clean.double_value(&[1, k, 0, 0]) as f32));
        assert_eq!(strip.get_pixel(x, y).0, expected);
    }

    #[test]
    fn the_mask_form_replays_with_the_mask_trigger() {
        let dir = tempfile::tempdir().unwrap();
        let clean = Tensor::rand([2, 3, 6, 5], CPU);
        let mask = Tensor::rand([1, 6, 5], CPU);
        let pattern = Tensor::rand([3, 6, 5], CPU);
        let trigger = mask.f_mul(&pattern).unwrap();
        let triggered = clean
            .f_mul(&mask.f_rsub_scalar(1.0).unwrap())
            .unwrap()
            .f_add(&trigger)
            .unwrap();
        let mut p = pictures(&trigger, &clean, &triggered, &[0, 0], &[7, 7]);
        p.form = "mask";
        p.mask = Some(&mask);
        p.pattern = Some(&pattern);
        let written = write(dir.path(), &p, &Inputs::default()).unwrap();
        assert_eq!(written.len(), 5);
        let (mask_file, pattern_file) = (&written[3], &written[4]);
        assert!(mask_file.ends_with("net.class7.mask.npy"));
        let m: ndarray::Array2<f32> = ndarray_npy::read_npy(mask_file).unwrap();
        assert_eq!(m.shape(), [6, 5]);

        let spec = format!(
            "mask:pattern={},mask={}",
            pattern_file.display(),
            mask_file.display()
        );
        let replay: Trigger = spec.parse().unwrap();
        let again = replay.apply(&clean).unwrap();
        let gap = again
            .f_sub(&triggered)
            .unwrap()
            .abs()
            .max()
            .double_value(&[]);
        assert!(gap < 1e-6, "{gap}");

        // A mask form without its mask is refused before anything is written.
        p.mask = None;
        let other = tempfile::tempdir().unwrap();
        assert!(write(other.path(), &p, &Inputs::default()).is_err());
        assert_eq!(std::fs::read_dir(other.path()).unwrap().count(), 0);
    }

    #[test]
    fn mismatched_inputs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let clean = Tensor::zeros([2, 1, 4, 4], CPU);
        let (trigger, triggered) = images(2, 1, 4, 4);
        let mut p = pictures(&trigger, &clean, &triggered, &[0, 1], &[0]);
        let e = write(dir.path(), &p, &Inputs::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 triggered predictions for 2 images"), "{e}");
        p.predictions = &[0, 1];
        p.stem = "../up";
        assert!(write(dir.path(), &p, &Inputs::default()).is_err());
        p.stem = "net";
        let small = Tensor::zeros([1, 4, 4], CPU);
        p.triggered = &small;
        assert!(write(dir.path(), &p, &Inputs::default()).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_font_draws_eleven_distinct_glyphs() {
        let drawn: Vec<Vec<u8>> = "0123456789-"
            .chars()
            .map(|ch| {
                let mut canvas = RgbImage::from_pixel(GLYPH_W, GLYPH_H, WHITE);
                draw_text(&mut canvas, &ch.to_string(), GLYPH_W / 2, 0);
                assert!(canvas.pixels().any(|p| *p == BLACK), "`{ch}` is blank");
                canvas.into_raw()
            })
            .collect();
        for (i, a) in drawn.iter().enumerate() {
            for b in &drawn[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // "-12" is three glyphs wide, centred.
        let mut canvas = RgbImage::from_pixel(40, GLYPH_H, WHITE);
        draw_text(&mut canvas, "-12", 20, 0);
        let cols: Vec<u32> = (0..40)
            .filter(|&x| (0..GLYPH_H).any(|y| *canvas.get_pixel(x, y) == BLACK))
            .collect();
        assert_eq!((cols[0], *cols.last().unwrap()), (4, 36));
    }

    #[test]
    fn factors_reach_the_side_and_stay_bounded() {
        assert_eq!(factor(28, 28, 224), 8);
        assert_eq!(factor(32, 32, 224), 7);
        assert_eq!(factor(300, 400, 224), 1);
        assert_eq!(factor(1, 10_000, 224), 1);
        assert_eq!(factor(2, 1000, 112), 4);
    }
}
