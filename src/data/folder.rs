//! Folders of images with one sub-folder per class (torchvision's
//! `ImageFolder` convention).
//!
//! Class index = position of the sub-folder in sorted name order; samples come
//! class by class, files in sorted name order within a class. PNG, JPEG and
//! BMP files are read (others and hidden files are skipped); all images must
//! have one size. Grayscale images give `C = 1`, colour ones `C = 3` (alpha is
//! dropped; when a folder mixes both, grayscale images are repeated to three
//! channels). 16-bit images are reduced to 8 bits before scaling to `[0, 1]`.
//!
//! Every file's header is read before any image is decoded: the decoded
//! size of the whole set is checked against the memory budget of
//! [`crate::limits`] first, and decoders may allocate no more than it.

use std::path::{Path, PathBuf};

use image::ImageDecoder;

use super::{images_tensor, labels_tensor, DataError, Dataset, RawImages, SourceLayout};
use crate::limits::{check_bytes, memory_budget, LimitError};

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

/// A reader for an image file (format from its contents) whose decoder may
/// allocate up to the memory budget: image's own default (512 MiB) would
/// refuse images that the budget allows, and a header that lies about its
/// size still fails cleanly. Opened as a regular file or not at all (an
/// entry swapped for a FIFO after the listing is refused, not waited on).
fn image_reader(
    path: &Path,
) -> Result<image::ImageReader<std::io::BufReader<std::fs::File>>, DataError> {
    let file = crate::inputs::open_regular(path).map_err(|e| DataError::io(path, e))?;
    let mut reader = image::ImageReader::new(std::io::BufReader::new(file));
    // As `ImageReader::open`: the extension's format, unless the contents
    // say otherwise.
    if let Ok(format) = image::ImageFormat::from_path(path) {
        reader.set_format(format);
    }
    let mut reader = reader
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(memory_budget());
    reader.limits(limits);
    Ok(reader)
}

fn image_error(path: &Path) -> impl Fn(image::ImageError) -> DataError + '_ {
    move |source| DataError::Image {
        path: path.to_path_buf(),
        source,
    }
}

/// An image file's size and channels (1 or 3, as [`decode`] gives them),
/// read from its header alone.
struct Header {
    width: u32,
    height: u32,
    channels: usize,
}

fn read_header(path: &Path) -> Result<Header, DataError> {
    let decoder = image_reader(path)?
        .into_decoder()
        .map_err(image_error(path))?;
    let (width, height) = decoder.dimensions();
    let channels = if decoder.color_type().has_color() {
        3
    } else {
        1
    };
    Ok(Header {
        width,
        height,
        channels,
    })
}

/// Decodes an image file (format from its contents) into HWC bytes.
pub(super) fn decode(path: &Path) -> Result<(Vec<u8>, usize, u32, u32), DataError> {
    let img = image_reader(path)?.decode().map_err(image_error(path))?;
    let (w, h) = (img.width(), img.height());
    if img.color().has_color() {
        Ok((img.to_rgb8().into_raw(), 3, h, w))
    } else {
        Ok((img.to_luma8().into_raw(), 1, h, w))
    }
}

/// The image files of each class folder, with their headers; all of one
/// size.
fn list_images(classes: &[PathBuf]) -> Result<Vec<(PathBuf, i64, Header)>, DataError> {
    let mut images: Vec<(PathBuf, i64, Header)> = Vec::new();
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
            let header = read_header(&file)?;
            if let Some((first, _, h0)) = images.first() {
                let (w, h) = (header.width, header.height);
                let (w0, h0) = (h0.width, h0.height);
                if (w0, h0) != (w, h) {
                    return Err(DataError::format(
                        &file,
                        format!(
                            "image is {w}x{h} but `{}` is {w0}x{h0}; all images must have one size",
                            first.display()
                        ),
                    ));
                }
            }
            images.push((file, class as i64, header));
        }
    }
    Ok(images)
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
    // Every header is read before any image is decoded, so that the decoded
    // size of the whole set is checked against the budget first.
    let images = list_images(&classes)?;
    // Not empty: there is a class folder, and each holds an image.
    let (w, h) = (images[0].2.width, images[0].2.height);
    let channels = if images.iter().any(|(_, _, header)| header.channels == 3) {
        3
    } else {
        1
    };
    let what = format!(
        "the decoded images ({} of {w}x{h}x{channels}, float32)",
        images.len()
    );
    let float_bytes = [
        images.len() as u128,
        channels as u128,
        h as u128,
        w as u128,
        4,
    ]
    .into_iter()
    .try_fold(1u128, u128::checked_mul)
    .ok_or_else(|| LimitError::Overflow { what: what.clone() })
    .and_then(|bytes| check_bytes(bytes, &what).map(|()| bytes))
    .map_err(|e| DataError::format(root, e.to_string()))?;

    let mut raw = Vec::with_capacity((float_bytes / 4) as usize);
    for (file, _, header) in &images {
        let (pixels, c, h_decoded, w_decoded) = decode(file)?;
        if (w_decoded, h_decoded, c) != (w, h, header.channels) {
            return Err(DataError::format(
                file,
                format!(
                    "decoded as {w_decoded}x{h_decoded}x{c} but its header says {w}x{h}x{}",
                    header.channels
                ),
            ));
        }
        if c == channels {
            raw.extend_from_slice(&pixels);
        } else {
            raw.extend(pixels.iter().flat_map(|&v| [v, v, v]));
        }
    }
    let labels: Vec<i64> = images.iter().map(|(_, class, _)| *class).collect();
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
    use std::io::Write;

    use image::{GrayImage, RgbImage};

    /// A grayscale PNG whose header says `width` x `height` and whose pixel
    /// data is a few bytes: it cannot be decoded.
    fn png_header_only(width: u32, height: u32) -> Vec<u8> {
        fn chunk(png: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
            png.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let mut crc = flate2::Crc::new();
            crc.update(kind);
            crc.update(data);
            png.extend_from_slice(kind);
            png.extend_from_slice(data);
            png.extend_from_slice(&crc.sum().to_be_bytes());
        }
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
        chunk(&mut png, b"IHDR", &ihdr);
        let mut idat = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        idat.write_all(&[0; 64]).unwrap();
        chunk(&mut png, b"IDAT", &idat.finish().unwrap());
        chunk(&mut png, b"IEND", &[]);
        png
    }

    /// Folders whose images, decoded, would exceed the memory budget: refused
    /// from their headers, before any is decoded (each image alone is within
    /// the budget; decoding them one after the other aborted).
    #[test]
    fn folder_over_the_budget_is_refused_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let class = dir.path().join("a");
        std::fs::create_dir(&class).unwrap();
        let png = png_header_only(16000, 16000);
        let copies = crate::limits::memory_budget() / (16000 * 16000 * 4) + 1;
        for i in 0..copies {
            std::fs::write(class.join(format!("{i:04}.png")), &png).unwrap();
        }
        let e = super::super::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains(&format!("({copies} of 16000x16000x1, float32)"))
                && e.contains(&dir.path().display().to_string())
                && e.contains(crate::limits::BUDGET_VARIABLE),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");

        let one = tempfile::tempdir().unwrap();
        std::fs::create_dir(one.path().join("a")).unwrap();
        let huge = png_header_only(1 << 20, 1 << 20);
        std::fs::write(one.path().join("a").join("huge.png"), huge).unwrap();
        let e = super::super::load(one.path()).unwrap_err().to_string();
        assert!(e.contains(crate::limits::BUDGET_VARIABLE), "{e}");
    }

    /// A header within the budget over data that is not there: a clean
    /// error naming the file.
    #[test]
    fn folder_image_lying_about_its_size_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        let path = dir.path().join("a").join("liar.png");
        std::fs::write(&path, png_header_only(16000, 16000)).unwrap();
        let e = super::super::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("liar.png"), "{e}");
    }

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
