//! `flowmark top`: a live terminal view (ratatui) of a running daemon —
//! per-port rates, path shares (mark / EMC / dpcls / upcall, cumulative),
//! megaflows by offload state, offload failures by reason, and the top
//! megaflows by packet rate with their offload state or the reason they
//! stay in software. Rates come from two samples `--interval` apart; `q`
//! (or Esc, Ctrl-C) quits. `--once` prints one frame and exits; `--json`
//! prints that frame's document instead.
//!
//! A sample is four control requests (`port stats`, `pmd stats`,
//! `offload status`, `megaflow dump`), answered from what the daemon
//! publishes: `top` never touches a fast path.

use flowmark::control::{self, ClientError, Request};
use ratatui::backend::{CrosstermBackend, TestBackend};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::crossterm::{execute, terminal};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ratatui::{Frame, Terminal};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Megaflows listed in the view.
const TOP_FLOWS: usize = 10;
/// `--once` frame width when stdout is not a terminal (at least).
const ONCE_WIDTH: u16 = 160;
/// Width of the megaflow table's columns before the megaflow, with borders
/// and column gaps.
const FLOW_COLUMNS: usize = 8 + 12 + 8 + 10 + 34 + 5 + 2;

#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the terminal: {0} (use --once for a single frame without a terminal)")]
    Terminal(std::io::Error),
    #[error("--interval {0}: give a positive number of seconds")]
    Interval(f64),
    #[error("cannot write JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// One reading of the daemon.
struct Sample {
    at: Instant,
    ports: Value,
    pmds: Value,
    offload: Value,
    megaflows: Value,
    port_list: Value,
}

fn sample(socket: &Path) -> Result<Sample, ClientError> {
    let call = |req: Request| control::call(socket, &req, Some(Duration::from_secs(10)));
    Ok(Sample {
        ports: call(Request::PortStats)?,
        pmds: call(Request::PmdStats { clear: false })?,
        offload: call(Request::OffloadStatus)?,
        megaflows: call(Request::MegaflowDump { state: None })?,
        port_list: call(Request::PortList)?,
        at: Instant::now(),
    })
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn items(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

fn sum_reasons(v: &Value) -> u64 {
    v.as_object().map_or(0, |o| o.values().map(u).sum())
}

/// A port's line: rates over the interval and totals.
#[derive(Debug, Serialize)]
pub struct PortRow {
    pub name: String,
    pub rx_pps: f64,
    pub tx_pps: f64,
    pub rx_dropped_pps: f64,
    pub tx_dropped_pps: f64,
    pub rx: u64,
    pub tx: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

/// Cumulative shares of the classification paths (percent; they add up to
/// 100 once a packet was classified).
#[derive(Debug, Default, Serialize)]
pub struct Shares {
    pub mark: f64,
    pub simple: f64,
    pub emc: f64,
    pub dpcls: f64,
    pub upcall: f64,
    pub packets: u64,
}

/// A megaflow's line.
#[derive(Debug, Serialize)]
pub struct FlowRow {
    pub pps: f64,
    pub packets: u64,
    pub port: String,
    pub state: String,
    /// Why it is not offloaded (rejected/failed reason, or why it stays in
    /// software); for an offloaded one, its mark.
    pub detail: String,
    pub megaflow: String,
}

/// One frame's content (`--json` prints it).
#[derive(Debug, Serialize)]
pub struct View {
    pub interval_s: f64,
    pub ports: Vec<PortRow>,
    pub paths: Shares,
    pub states: BTreeMap<String, u64>,
    /// Offload failures and rejections so far, by reason (every port).
    pub failures: BTreeMap<String, u64>,
    pub megaflows: usize,
    pub top: Vec<FlowRow>,
}

fn view(prev: &Sample, cur: &Sample) -> View {
    let secs = cur.at.saturating_duration_since(prev.at).as_secs_f64();
    let rate = |now: u64, before: u64| {
        if secs > 0.0 {
            now.saturating_sub(before) as f64 / secs
        } else {
            0.0
        }
    };
    let before: HashMap<&str, &Value> = items(&prev.ports)
        .iter()
        .filter_map(|p| Some((p["name"].as_str()?, p)))
        .collect();
    let ports = items(&cur.ports)
        .iter()
        .map(|p| {
            let b = before
                .get(p["name"].as_str().unwrap_or(""))
                .copied()
                .unwrap_or(&Value::Null);
            let (rx_d, tx_d) = (sum_reasons(&p["rx_dropped"]), sum_reasons(&p["tx_dropped"]));
            PortRow {
                name: p["name"].as_str().unwrap_or("?").to_string(),
                rx_pps: rate(u(&p["rx"]), u(&b["rx"])),
                tx_pps: rate(u(&p["tx"]), u(&b["tx"])),
                rx_dropped_pps: rate(rx_d, sum_reasons(&b["rx_dropped"])),
                tx_dropped_pps: rate(tx_d, sum_reasons(&b["tx_dropped"])),
                rx: u(&p["rx"]),
                tx: u(&p["tx"]),
                rx_dropped: rx_d,
                tx_dropped: tx_d,
            }
        })
        .collect();

    let mut paths = Shares::default();
    let (mut mark, mut simple, mut emc, mut dpcls, mut upcall) = (0u64, 0u64, 0u64, 0u64, 0u64);
    for p in items(&cur.pmds) {
        mark += u(&p["mark_hits"]);
        simple += u(&p["simple_hits"]);
        emc += u(&p["emc_hits"]);
        dpcls += u(&p["dpcls_hits"]);
        upcall += u(&p["upcalls"]);
    }
    let total = mark + simple + emc + dpcls + upcall;
    if total > 0 {
        let pct = |n: u64| (n as f64 * 1000.0 / total as f64).round() / 10.0;
        paths = Shares {
            mark: pct(mark),
            simple: pct(simple),
            emc: pct(emc),
            dpcls: pct(dpcls),
            upcall: pct(upcall),
            packets: total,
        };
    }

    let states = cur.offload["states"]
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), u(v))).collect())
        .unwrap_or_default();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    for p in items(&cur.offload["ports"]) {
        if let Some(o) = p["failures"].as_object() {
            for (reason, n) in o {
                *failures.entry(reason.clone()).or_default() += u(n);
            }
        }
    }

    let no_device: Vec<&str> = items(&cur.port_list)
        .iter()
        .filter(|p| p["flow_device"] == Value::Bool(false))
        .filter_map(|p| p["name"].as_str())
        .collect();
    let earlier: HashMap<(&str, &str), u64> = items(&prev.megaflows)
        .iter()
        .filter_map(|m| Some(((m["port"].as_str()?, m["ufid"].as_str()?), u(&m["packets"]))))
        .collect();
    let mut top: Vec<FlowRow> = items(&cur.megaflows)
        .iter()
        .map(|m| {
            let port = m["port"].as_str().unwrap_or("?");
            let packets = u(&m["packets"]);
            let was = earlier
                .get(&(port, m["ufid"].as_str().unwrap_or("")))
                .copied()
                .unwrap_or(0);
            let state = m["state"].as_str().unwrap_or("?").to_string();
            let detail = match (state.as_str(), m["reason"].as_str()) {
                (_, Some(r)) => r.to_string(),
                ("offloaded", None) => format!("mark {}", u(&m["mark"])),
                ("software", None) if no_device.contains(&port) => {
                    format!("{port} has no flow device")
                }
                ("software", None) => "offload off or its queue was full".to_string(),
                ("pending", None) => "waiting for the offload worker".to_string(),
                _ => String::new(),
            };
            FlowRow {
                pps: rate(packets, was),
                packets,
                port: port.to_string(),
                state,
                detail,
                megaflow: m["megaflow"].as_str().unwrap_or("").to_string(),
            }
        })
        .collect();
    let megaflows = top.len();
    top.sort_by(|a, b| {
        b.pps
            .total_cmp(&a.pps)
            .then(b.packets.cmp(&a.packets))
            .then_with(|| a.megaflow.cmp(&b.megaflow))
    });
    top.truncate(TOP_FLOWS);
    View {
        interval_s: (secs * 1000.0).round() / 1000.0,
        ports,
        paths,
        states,
        failures,
        megaflows,
        top,
    }
}

fn rate_text(pps: f64) -> String {
    match pps {
        x if x >= 1e6 => format!("{:.2}M", x / 1e6),
        x if x >= 1e3 => format!("{:.1}k", x / 1e3),
        x => format!("{x:.0}"),
    }
}

/// Rows the frame needs (for `--once`'s off-screen terminal).
fn frame_height(v: &View) -> u16 {
    let rows = 1 + (v.ports.len() + 3) + 4 + (v.top.len().max(1) + 3);
    u16::try_from(rows).unwrap_or(u16::MAX)
}

fn render(f: &mut Frame, socket: &Path, v: &View) {
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let [head, ports_area, summary, flows_area] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(u16::try_from(v.ports.len() + 3).unwrap_or(u16::MAX)),
        Constraint::Length(4),
        Constraint::Min(4),
    ])
    .areas(f.area());
    f.render_widget(
        Paragraph::new(format!(
            "flowmark top — {} — rates over {:.1} s — q quits",
            socket.display(),
            v.interval_s
        )),
        head,
    );

    let header = Row::new([
        "port",
        "rx pps",
        "tx pps",
        "rx drop/s",
        "tx drop/s",
        "rx",
        "tx",
        "rx drops",
        "tx drops",
    ])
    .style(bold);
    let rows = v.ports.iter().map(|p| {
        Row::new([
            p.name.clone(),
            rate_text(p.rx_pps),
            rate_text(p.tx_pps),
            rate_text(p.rx_dropped_pps),
            rate_text(p.tx_dropped_pps),
            p.rx.to_string(),
            p.tx.to_string(),
            p.rx_dropped.to_string(),
            p.tx_dropped.to_string(),
        ])
    });
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(12),
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Length(10),
                Constraint::Length(10),
                Constraint::Length(14),
                Constraint::Length(14),
                Constraint::Length(10),
                Constraint::Length(10),
            ],
        )
        .header(header)
        .block(Block::bordered().title(" ports ")),
        ports_area,
    );

    let s = &v.paths;
    let states: Vec<String> = v.states.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let failures = if v.failures.is_empty() {
        "none".to_string()
    } else {
        v.failures
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    f.render_widget(
        Paragraph::new(vec![
            Line::from(format!(
                "paths (cumulative)  mark {:5.1}%  simple {:5.1}%  emc {:5.1}%  dpcls {:5.1}%  upcall {:5.1}%   of {} packets",
                s.mark, s.simple, s.emc, s.dpcls, s.upcall, s.packets
            )),
            Line::from(format!(
                "megaflows {}: {}   failures: {}",
                v.megaflows,
                states.join("  "),
                failures
            )),
        ])
        .block(Block::bordered().title(" datapath and offload ")),
        summary,
    );

    let header = Row::new(["pps", "packets", "port", "state", "offload", "megaflow"]).style(bold);
    let rows = v.top.iter().map(|m| {
        Row::new([
            rate_text(m.pps),
            m.packets.to_string(),
            m.port.clone(),
            m.state.clone(),
            m.detail.clone(),
            m.megaflow.clone(),
        ])
    });
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(8),
                Constraint::Length(12),
                Constraint::Length(8),
                Constraint::Length(10),
                Constraint::Length(34),
                Constraint::Fill(1),
            ],
        )
        .header(header)
        .block(Block::bordered().title(" top megaflows by packet rate ")),
        flows_area,
    );
}

/// `flowmark top`.
pub fn run(socket: PathBuf, once: bool, interval: f64, json: bool) -> Result<(), TopError> {
    if !(interval > 0.0 && interval.is_finite()) {
        return Err(TopError::Interval(interval));
    }
    let interval = Duration::from_secs_f64(interval);
    if once || json {
        let first = sample(&socket)?;
        std::thread::sleep(interval);
        let second = sample(&socket)?;
        let v = view(&first, &second);
        if json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            print!("{}", once_text(&socket, &v)?);
        }
        return Ok(());
    }
    live(&socket, interval)
}

/// One frame as text, drawn by the same renderer on an off-screen buffer.
fn once_text(socket: &Path, v: &View) -> Result<String, TopError> {
    use std::io::IsTerminal;
    // On a terminal, its width; else wide enough for the longest megaflow.
    let longest = v.top.iter().map(|m| m.megaflow.len()).max().unwrap_or(0);
    let width = if std::io::stdout().is_terminal() {
        terminal::size().map_or(ONCE_WIDTH, |(w, _)| w)
    } else {
        u16::try_from(longest + FLOW_COLUMNS).map_or(u16::MAX, |w| w.max(ONCE_WIDTH))
    };
    let mut term =
        Terminal::new(TestBackend::new(width, frame_height(v))).map_err(TopError::Terminal)?;
    term.draw(|f| render(f, socket, v))
        .map_err(TopError::Terminal)?;
    let buf = term.backend().buffer();
    let mut out = String::new();
    for y in 0..buf.area.height {
        let line: String = (0..buf.area.width)
            .filter_map(|x| buf.cell((x, y)).map(|c| c.symbol().to_string()))
            .collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    Ok(out)
}

/// Restores the terminal however the live view ends.
struct Screen;

impl Screen {
    fn enter() -> std::io::Result<Screen> {
        terminal::enable_raw_mode()?;
        if let Err(e) = execute!(std::io::stdout(), terminal::EnterAlternateScreen) {
            let _ = terminal::disable_raw_mode();
            return Err(e);
        }
        Ok(Screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = execute!(std::io::stdout(), terminal::LeaveAlternateScreen);
        let _ = terminal::disable_raw_mode();
    }
}

/// True when the key asks to quit (q, Esc, Ctrl-C).
fn wants_quit(deadline: Instant) -> std::io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        if event::poll(left)? {
            if let Event::Key(k) = event::read()? {
                if k.kind != KeyEventKind::Release
                    && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                        || (k.code == KeyCode::Char('c')
                            && k.modifiers.contains(KeyModifiers::CONTROL)))
                {
                    return Ok(true);
                }
            }
        }
    }
}

fn live(socket: &Path, interval: Duration) -> Result<(), TopError> {
    let mut prev = sample(socket)?;
    let screen = Screen::enter().map_err(TopError::Terminal)?;
    let mut term =
        Terminal::new(CrosstermBackend::new(std::io::stdout())).map_err(TopError::Terminal)?;
    // The first frame at once (no rates yet), then one per interval.
    let first = view(&prev, &prev);
    term.draw(|f| render(f, socket, &first))
        .map_err(TopError::Terminal)?;
    loop {
        if wants_quit(Instant::now() + interval).map_err(TopError::Terminal)? {
            break;
        }
        let cur = sample(socket)?;
        let v = view(&prev, &cur);
        term.draw(|f| render(f, socket, &v))
            .map_err(TopError::Terminal)?;
        prev = cur;
    }
    let _ = term.show_cursor();
    drop(screen);
    Ok(())
}
