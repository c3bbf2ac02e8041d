//! Folders of images with one sub-folder per class (torchvision's
//! `ImageFolder` convention).
//!
//! Class index = position of the sub-folder in sorted name order; samples come
//! class by class, files in sorted name order within a class. PNG, JPEG and
//! BMP files are read (others and hidden files are skipped); all images must
//! have one size. Grayscale images give `C = 1`, colour ones `C = 3` (alpha is
//! dropped; when a folder mixes both, grayscale images are repeated to three
//! channels). 16-bit images are reduced to 8 bits before scaling to `[0, 1]`.

use std::path::{Path, PathBuf};

use super::{images_tensor, labels_tensor, DataError, Dataset, RawImages, SourceLayout};

const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp"];

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut entries = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DataError::io(dir, e))?;
    entries.retain(|p| {
        !p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
    });
    entries.sort();
    Ok(entries)
}

fn is_image_file(p: &Path) -> bool {
    p.is_file()
        && p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// One decoded image: HWC bytes with 1 or 3 channels.
struct Decoded {
    pixels: Vec<u8>,
    channels: usize,
}

/// Decodes an image file (format from its contents) into HWC bytes.
pub(super) fn decode(path: &Path) -> Result<(Vec<u8>, usize, u32, u32), DataError> {
    let img = image::ImageReader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?
        .decode()
        .map_err(|source| DataError::Image {
            path: path.to_path_buf(),
            source,
        })?;
    let (w, h) = (img.width(), img.height());
    if img.color().has_color() {
        Ok((img.to_rgb8().into_raw(), 3, h, w))
    } else {
        Ok((img.to_luma8().into_raw(), 1, h, w))
    }
}

pub(super) fn load(root: &Path) -> Result<Dataset, DataError> {
    let classes: Vec<PathBuf> = sorted_entries(root)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect();
    if classes.is_empty() {
        return Err(DataError::format(
            root,
            "holds no class sub-folders (expected one sub-folder of images per class)",
        ));
    }
    let mut decoded = Vec::new();
    let mut labels = Vec::new();
    let mut size: Option<(u32, u32, PathBuf)> = None;
    for (class, dir) in classes.iter().enumerate() {
        let files: Vec<PathBuf> = sorted_entries(dir)?
            .into_iter()
            .filter(|p| is_image_file(p))
            .collect();
        if files.is_empty() {
            return Err(DataError::format(
                dir,
                format!("class folder holds no images ({})", EXTENSIONS.join(", ")),
            ));
        }
        for file in files {
            let (pixels, channels, h, w) = decode(&file)?;
            match &size {
                None => size = Some((h, w, file.clone())),
                Some((h0, w0, first)) if (*h0, *w0) != (h, w) => {
                    return Err(DataError::format(
                        &file,
                        format!(
                            "image is {w}x{h} but `{}` is {w0}x{h0}; all images must have one size",
                            first.display()
                        ),
                    ))
                }
                Some(_) => {}
            }
            decoded.push(Decoded { pixels, channels });
            labels.push(class as i64);
        }
    }
    let (h, w, _) = size.expect("at least one image was decoded");
    let channels = if decoded.iter().any(|d| d.channels == 3) {
        3
    } else {
        1
    };
    let mut raw = Vec::with_capacity(decoded.len() * channels * (h * w) as usize);
    for d in decoded {
        if d.channels == channels {
            raw.extend_from_slice(&d.pixels);
        } else {
            raw.extend(d.pixels.iter().flat_map(|&v| [v, v, v]));
        }
    }
    let n = labels.len() as i64;
    let images = images_tensor(
        root,
        RawImages::U8(raw),
        [n, h as i64, w as i64, channels as i64],
        SourceLayout::Nhwc,
    )?;
    let labels = labels_tensor(root, &labels)?;
    Dataset::new(
        images,
        labels,
        root.display().to_string(),
        SourceLayout::Nhwc,
    )
}

#[cfg(test)]
mod tests {
    use image::{GrayImage, RgbImage};

    #[test]
    fn two_class_folder_of_grayscale_pngs() {
        let dir = tempfile::tempdir().unwrap();
        // Created out of order: classes are sorted by name.
        for (class, values) in [("b_shirt", [200u8, 50]), ("a_boot", [10u8, 20])] {
            let d = dir.path().join(class);
            std::fs::create_dir(&d).unwrap();
            for (i, v) in values.iter().enumerate() {
                GrayImage::from_pixel(3, 2, image::Luma([*v]))
                    .save(d.join(format!("{i}.png")))
                    .unwrap();
            }
            std::fs::write(d.join("README.txt"), "not an image").unwrap();
        }
        let ds = super::super::load(dir.path()).unwrap();
        assert_eq!(ds.images.size(), vec![4, 1, 2, 3]);
        assert_eq!(Vec::<i64>::try_from(&ds.labels).unwrap(), vec![0, 0, 1, 1]);
        assert!((ds.images.double_value(&[2, 0, 1, 2]) - 200.0 / 255.0).abs() < 1e-6);
        assert!((ds.images.double_value(&[1, 0, 0, 0]) - 20.0 / 255.0).abs() < 1e-6);
    }

    #[test]
    fn rgb_and_mixed_folders() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        RgbImage::from_pixel(2, 2, image::Rgb([255, 0, 51]))
            .save(a.join("x.png"))
            .unwrap();
        GrayImage::from_pixel(2, 2, image::Luma([102]))
            .save(b.join("y.bmp"))
            .unwrap();
        let ds = super::super::load(dir.path()).unwrap();
        assert_eq!(ds.images.size(), vec![2, 3, 2, 2]);
        assert_eq!(ds.images.double_value(&[0, 0, 1, 1]), 1.0);
        assert!((ds.images.double_value(&[0, 2, 0, 0]) - 0.2).abs() < 1e-6);
        assert!((ds.images.double_value(&[1, 1, 0, 0]) - 0.4).abs() < 1e-6);
    }

    #[test]
    fn folder_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::create_dir(&a).unwrap();
        GrayImage::new(2, 2).save(a.join("0.png")).unwrap();
        GrayImage::new(3, 2).save(a.join("1.png")).unwrap();
        let e = super::super::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("1.png") && e.contains("3x2") && e.contains("0.png"),
            "{e}"
        );

        std::fs::remove_file(a.join("1.png")).unwrap();
        std::fs::write(a.join("2.png"), b"garbage").unwrap();
        let e = super::super::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("2.png"), "{e}");

        let empty = tempfile::tempdir().unwrap();
        let e = super::super::load(empty.path()).unwrap_err().to_string();
        assert!(e.contains("no class sub-folders"), "{e}");
    }
}
