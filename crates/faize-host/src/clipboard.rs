//! The host's side of the clipboard bridge and of opening links:
//! - reading the user's clipboard (text, and images as PNG: other formats are converted) when
//!   they press Ctrl+V, through `wl-paste` on Wayland or `xclip` on X11, each call bounded by a
//!   timeout so a hung clipboard owner cannot freeze the terminal;
//! - writing to it, for guest copies the user allowed (`clipboard.copy_to_host`);
//! - deciding whether a URL the guest asks to open is opened (`open_urls`) or only shown.

use std::time::Duration;

use tokio::process::Command;

use crate::home::find_program;

/// The longest one clipboard tool may take before it is killed.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest clipboard item passed to the guest.
pub const MAX_ITEM: usize = 32 << 20;

/// Hosts whose https URLs are opened by default: what Claude Code's login needs.
pub const DEFAULT_OPEN_URLS: [&str; 3] = ["claude.ai", "console.anthropic.com", "platform.claude.com"];

/// The program that reads and writes the user's clipboard.
pub enum Tool {
    Wayland(std::path::PathBuf),
    X11(std::path::PathBuf),
}

impl std::fmt::Display for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tool::Wayland(p) => write!(f, "{} (Wayland)", p.display()),
            Tool::X11(p) => write!(f, "{} (X11)", p.display()),
        }
    }
}

/// The clipboard tool of this display; why there is none (no display, no tool) otherwise.
pub fn tool() -> Result<Tool, String> {
    let set = |v: &str| std::env::var_os(v).is_some_and(|x| !x.is_empty());
    if set("WAYLAND_DISPLAY") {
        if let Some(p) = find_program("wl-paste", "FAIZE_WL_PASTE") {
            return Ok(Tool::Wayland(p));
        }
    }
    if set("DISPLAY") {
        return find_program("xclip", "FAIZE_XCLIP")
            .map(Tool::X11)
            .ok_or_else(|| "DISPLAY is set but xclip is not installed (apt install xclip)".into());
    }
    Err("no display (neither WAYLAND_DISPLAY with wl-paste nor DISPLAY with xclip)".into())
}

/// Runs a clipboard tool; `None` when it failed, said nothing, or took too long.
async fn output(program: &std::path::Path, args: &[&str]) -> Option<Vec<u8>> {
    let child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(TOOL_TIMEOUT, child).await {
        Ok(Ok(out)) if out.status.success() && !out.stdout.is_empty() && out.stdout.len() <= MAX_ITEM => {
            Some(out.stdout)
        }
        Ok(Ok(_)) | Ok(Err(_)) => None,
        Err(_) => {
            tracing::warn!("{} took more than {TOOL_TIMEOUT:?}: clipboard skipped", program.display());
            None
        }
    }
}

/// Reads the clipboard with `tool`: its PNG image if it offers one (or another image,
/// converted), and its text, as (MIME type, data); nothing when it is empty or unreadable.
pub async fn read(tool: Tool) -> Vec<(String, Vec<u8>)> {
    let types = match &tool {
        Tool::Wayland(p) => output(p, &["--list-types"]).await,
        Tool::X11(p) => output(p, &["-selection", "clipboard", "-t", "TARGETS", "-o"]).await,
    };
    let types: Vec<String> =
        types.map(|t| String::from_utf8_lossy(&t).lines().map(|l| l.trim().to_string()).collect()).unwrap_or_default();
    let get = async |mime: &str| match &tool {
        Tool::Wayland(p) => output(p, &["--no-newline", "--type", mime]).await,
        Tool::X11(p) => output(p, &["-selection", "clipboard", "-t", mime, "-o"]).await,
    };
    let mut items = Vec::new();
    if types.iter().any(|t| t == "image/png") {
        if let Some(png) = get("image/png").await {
            items.push(("image/png".to_string(), png));
        }
    } else if let Some(mime) = types.iter().find(|t| CONVERTED_IMAGES.contains(&t.as_str())) {
        if let Some(image) = get(mime).await {
            let mime = mime.clone();
            match tokio::task::spawn_blocking(move || to_png(&image)).await {
                Ok(Ok(png)) => items.push(("image/png".to_string(), png)),
                Ok(Err(e)) => tracing::warn!("the clipboard's {mime} image could not be converted to PNG: {e}"),
                Err(e) => tracing::warn!("converting the clipboard's {mime} image: {e}"),
            }
        }
    }
    let text_type = ["UTF8_STRING", "text/plain;charset=utf-8", "text/plain", "STRING"]
        .into_iter()
        .find(|want| types.iter().any(|t| t == want));
    if let Some(t) = text_type {
        if let Some(text) = get(t).await {
            items.push(("text/plain".to_string(), text));
        }
    }
    items
}

/// Image types offered without PNG that are converted to PNG for the guest.
const CONVERTED_IMAGES: [&str; 6] = ["image/jpeg", "image/gif", "image/bmp", "image/webp", "image/tiff", "image/x-bmp"];

/// Decodes an image (its format told by its content) and encodes it as PNG.
pub fn to_png(data: &[u8]) -> Result<Vec<u8>, String> {
    let image = image::load_from_memory(data).map_err(|e| e.to_string())?;
    let mut png = std::io::Cursor::new(Vec::new());
    image.write_to(&mut png, image::ImageFormat::Png).map_err(|e| e.to_string())?;
    Ok(png.into_inner())
}

/// Puts `data` on the clipboard (a guest copy the user allowed).
pub async fn write(mime: &str, data: Vec<u8>) -> Result<(), String> {
    let (program, args): (std::path::PathBuf, Vec<&str>) = match tool()? {
        Tool::Wayland(_) => {
            let p = find_program("wl-copy", "FAIZE_WL_COPY").ok_or("wl-copy is not installed")?;
            (p, vec!["--type", mime])
        }
        Tool::X11(p) => (p, vec!["-selection", "clipboard", "-t", mime, "-i"]),
    };
    let mut child = Command::new(&program)
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("running {}: {e}", program.display()))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    use tokio::io::AsyncWriteExt;
    tokio::time::timeout(TOOL_TIMEOUT, stdin.write_all(&data))
        .await
        .map_err(|_| "the clipboard tool did not take the data in time".to_string())?
        .map_err(|e| e.to_string())?;
    drop(stdin);
    // xclip stays in the background to serve the selection; it is not waited for.
    Ok(())
}

/// What happens to a URL the guest asks to open.
#[derive(Debug, PartialEq, Eq)]
pub enum UrlDecision {
    /// Opened in the user's browser.
    Open,
    /// Shown for the user to copy, with the reason it was not opened.
    Show(String),
}

/// `https` URLs whose host is in `allowed` (exactly, or under a `*.` entry) are opened; any
/// other URL is only shown.
pub fn decide_url(url: &str, allowed: &[String]) -> UrlDecision {
    let Ok(parsed) = url::Url::parse(url) else {
        return UrlDecision::Show("not a valid URL".into());
    };
    if parsed.scheme() != "https" {
        return UrlDecision::Show(format!("only https URLs are opened, not {}:", parsed.scheme()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return UrlDecision::Show("URLs with credentials are not opened".into());
    }
    let Some(host) = parsed.host_str().map(|h| h.trim_end_matches('.').to_ascii_lowercase()) else {
        return UrlDecision::Show("the URL has no host".into());
    };
    let ok = allowed.iter().any(|a| {
        let a = a.trim_end_matches('.').to_ascii_lowercase();
        match a.strip_prefix("*.") {
            Some(base) => host.ends_with(&format!(".{base}")),
            None => host == a,
        }
    });
    if ok {
        UrlDecision::Open
    } else {
        UrlDecision::Show(format!("{host} is not in open_urls"))
    }
}

/// `text` with control characters escaped, safe to print on the user's terminal (a URL comes
/// from the guest and could carry escape sequences).
pub fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// The program that opens URLs: `$FAIZE_BROWSER` if set (tests use a stub), else `xdg-open`.
pub fn browser() -> Result<std::path::PathBuf, String> {
    std::env::var_os("FAIZE_BROWSER")
        .map(std::path::PathBuf::from)
        .or_else(|| find_program("xdg-open", "FAIZE_XDG_OPEN"))
        .ok_or_else(|| "no browser: xdg-open is not installed (or set FAIZE_BROWSER)".into())
}

/// Opens `url` in the user's browser ([`browser`]). The browser is not waited for.
pub fn open_in_browser(url: &str) -> Result<(), String> {
    let program = browser()?;
    std::process::Command::new(&program)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(drop)
        .map_err(|e| format!("running {}: {e}", program.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_image_formats_become_png() {
        let mut bmp = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_pixel(3, 2, image::Rgb([200, 10, 10]))
            .write_to(&mut bmp, image::ImageFormat::Bmp)
            .unwrap();
        let png = to_png(bmp.get_ref()).unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        let back = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!((back.width(), back.height(), back.get_pixel(2, 1).0), (3, 2, [200, 10, 10]));
        assert!(to_png(b"not an image").is_err());
    }

    #[test]
    fn guest_text_cannot_drive_the_terminal() {
        assert_eq!(printable("https://x/\x1b]0;pwned\x07\r\n"), "https://x/\\u{1b}]0;pwned\\u{7}\\r\\n");
    }

    #[test]
    fn only_https_urls_of_allowed_hosts_are_opened() {
        let allowed: Vec<String> = ["claude.ai", "*.example.com"].map(String::from).to_vec();
        for (url, open) in [
            ("https://claude.ai/oauth/authorize?code=1&redirect_uri=http%3A%2F%2Flocalhost%3A5432", true),
            ("https://CLAUDE.AI./x", true),
            ("https://a.example.com/", true),
            ("https://example.com/", false),
            ("http://claude.ai/", false),
            ("https://evil.example/claude.ai", false),
            ("https://claude.ai.evil.example/", false),
            ("https://user:pw@claude.ai/", false),
            ("file:///etc/passwd", false),
            ("javascript:alert(1)", false),
            ("not a url", false),
        ] {
            assert_eq!(decide_url(url, &allowed) == UrlDecision::Open, open, "{url}");
        }
    }
}
