//! The benchmark's outputs: `results.json`, `report.md` and SVG plots (offered
//! vs delivered rate per scenario, latency CDFs, throughput vs number of
//! Services), and the summary table with nodeplane/kernel ratios. It only
//! formats results; it measures nothing.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::suite::{BenchResult, ScenarioResult};

const COLORS: [RGBColor; 3] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
];

fn color_of(path: &str) -> RGBColor {
    match path {
        "nodeplane" => COLORS[0],
        "nftables" | "kube-proxy-nftables" => COLORS[1],
        _ => COLORS[2],
    }
}

fn paths(r: &BenchResult) -> Vec<String> {
    let mut v: Vec<String> = r.scenarios.iter().map(|s| s.path.clone()).collect();
    v.dedup();
    v.sort();
    v.dedup();
    v
}

fn find<'a>(r: &'a BenchResult, path: &str, sc: &str) -> Option<&'a ScenarioResult> {
    r.scenarios
        .iter()
        .find(|s| s.path == path && s.scenario == sc)
}

fn best_kernel<'a>(r: &'a BenchResult, sc: &str) -> Option<&'a ScenarioResult> {
    r.scenarios
        .iter()
        .filter(|s| s.path != "nodeplane" && s.scenario == sc)
        .max_by(|a, b| a.zero_loss_pps.total_cmp(&b.zero_loss_pps))
}

/// Writes everything into `out`; returns the summary table (also in the report).
pub fn write(r: &BenchResult, out: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(r)?)?;
    let mut scenarios: Vec<String> = r.scenarios.iter().map(|s| s.scenario.clone()).collect();
    scenarios.sort();
    scenarios.dedup();
    for sc in &scenarios {
        plot_rates(r, sc, &out.join(format!("rate-{sc}.svg")))?;
    }
    plot_cdf(r, &scenarios, &out.join("latency-cdf.svg"))?;
    if !r.scaling.is_empty() {
        plot_scaling(r, &out.join("scaling.svg"))?;
    }
    let summary = summary(r, &scenarios);
    let mut md = String::new();
    writeln!(md, "# nodeplane vs the kernel path\n")?;
    writeln!(
        md,
        "Command: `{}`  \nStarted {}; took {:.0} s.\n",
        r.command, r.started, r.elapsed_s
    )?;
    writeln!(
        md,
        "Generator ceiling (AF_XDP copy mode, one core, frames dropped by XDP on the peer): **{:.0} pps**. \
         A zero-loss rate marked *gen-limited* equals what the generator could offer: the path under \
         test was not the limit there.\n",
        r.generator_ceiling_pps
    )?;
    writeln!(
        md,
        "Where the work runs (the same for every path): core 1 is node-a's, the node under \
         test: nodeplane's worker busy-polls it; the kernel path's receive work for node-a's \
         interfaces is steered to it with RPS. Core 0 runs the generator, the sink (at real-time \
         priority, so the scheduler does not set the latency) and the other nodes, whose receive \
         work RPS steers there. On veth, work a sender triggers runs on the sender's core: a \
         pod's stack after node-a forwards to it runs on core 1 on both paths, and nodeplane's \
         XDP program and AF_XDP receive copy, which run in the receiving veth's NAPI, run on the \
         sending core (core 0 for traffic from the generator). The last column shows each \
         core's user, system and softirq time at full load.\n"
    )?;
    writeln!(md, "## Summary\n\n```\n{summary}```\n")?;
    writeln!(md, "## Per scenario and path\n")?;
    writeln!(md, "| scenario | path | zero-loss pps | gen-limited | full load: offered → delivered pps (loss) | p50 / p99 / p99.9 µs at half rate | CPU ns/packet (machine) | full load, core 0 / core 1: user+sys+softirq % |")?;
    writeln!(md, "| --- | --- | ---: | --- | --- | --- | ---: | --- |")?;
    for s in &r.scenarios {
        writeln!(
            md,
            "| {} | {} | {:.0} | {} | {:.0} → {:.0} ({:.2}%) | {:.1} / {:.1} / {:.1} | {:.0} | {} |",
            s.scenario,
            s.path,
            s.zero_loss_pps,
            if s.generator_limited { "yes" } else { "no" },
            s.full_load.offered_pps,
            s.full_load.delivered_pps,
            s.full_load.loss * 100.0,
            s.at_half_rate.latency_us_p50,
            s.at_half_rate.latency_us_p99,
            s.at_half_rate.latency_us_p999,
            s.full_load.cpu_ns_per_packet,
            cores_cell(&s.full_load.cores)
        )?;
    }
    if !r.pingpong.is_empty() {
        writeln!(md, "\n## sockperf ping-pong (UDP, round trip)\n")?;
        writeln!(
            md,
            "| scenario | path | avg µs | p50 µs | p99 µs | p99.9 µs | note |"
        )?;
        writeln!(md, "| --- | --- | ---: | ---: | ---: | ---: | --- |")?;
        for p in &r.pingpong {
            writeln!(
                md,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
                p.scenario,
                p.path,
                p.avg_us,
                p.p50_us,
                p.p99_us,
                p.p999_us,
                p.error.as_deref().unwrap_or("")
            )?;
        }
    }
    if !r.scaling.is_empty() {
        writeln!(md, "\n## Zero-loss rate of S4 vs number of Services\n")?;
        writeln!(md, "| path | services | zero-loss pps |")?;
        writeln!(md, "| --- | ---: | ---: |")?;
        for s in &r.scaling {
            writeln!(
                md,
                "| {} | {} | {:.0} |",
                s.path, s.services, s.zero_loss_pps
            )?;
        }
    }
    writeln!(md, "\n## Plots\n")?;
    for sc in &scenarios {
        writeln!(
            md,
            "- `rate-{sc}.svg`: offered vs delivered rate, every trial"
        )?;
    }
    writeln!(
        md,
        "- `latency-cdf.svg`: one-way latency at half the zero-loss rate"
    )?;
    if !r.scaling.is_empty() {
        writeln!(md, "- `scaling.svg`: zero-loss rate vs number of Services")?;
    }
    std::fs::write(out.join("report.md"), md)?;
    Ok(summary)
}

/// "u+s+si / u+s+si" per core, in percent.
fn cores_cell(cores: &[crate::suite::CoreUse]) -> String {
    cores
        .iter()
        .map(|c| {
            format!(
                "{:.0}+{:.0}+{:.0}",
                c.user * 100.0,
                c.system * 100.0,
                c.softirq * 100.0
            )
        })
        .collect::<Vec<_>>()
        .join(" / ")
}

/// The table printed at the end: nodeplane against the best kernel mode.
pub fn summary(r: &BenchResult, scenarios: &[String]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<4} {:>14} {:>14} {:>7} {:>11} {:>11} {:>7}",
        "", "nodeplane pps", "kernel pps", "ratio", "np p99 µs", "k p99 µs", "p99 ×"
    );
    for sc in scenarios {
        let np = find(r, "nodeplane", sc);
        let k = best_kernel(r, sc);
        let (npz, kz) = (
            np.map_or(0.0, |s| s.zero_loss_pps),
            k.map_or(0.0, |s| s.zero_loss_pps),
        );
        let (np99, k99) = (
            np.map_or(0.0, |s| s.at_half_rate.latency_us_p99),
            k.map_or(0.0, |s| s.at_half_rate.latency_us_p99),
        );
        let lim = |s: Option<&ScenarioResult>| {
            if s.is_some_and(|s| s.generator_limited) {
                "*"
            } else {
                " "
            }
        };
        let _ = writeln!(
            t,
            "{:<4} {:>13.0}{} {:>13.0}{} {:>7} {:>11.1} {:>11.1} {:>7}",
            sc,
            npz,
            lim(np),
            kz,
            lim(k),
            if kz > 0.0 {
                format!("{:.2}", npz / kz)
            } else {
                "-".into()
            },
            np99,
            k99,
            if k99 > 0.0 {
                format!("{:.2}", np99 / k99)
            } else {
                "-".into()
            },
        );
    }
    let _ = writeln!(
        t,
        "kernel = the better of {}; * = generator-limited (ceiling {:.0} pps)",
        paths(r)
            .into_iter()
            .filter(|p| p != "nodeplane")
            .collect::<Vec<_>>()
            .join(", "),
        r.generator_ceiling_pps
    );
    t
}

fn plot_rates(r: &BenchResult, sc: &str, file: &Path) -> anyhow::Result<()> {
    let series: Vec<&ScenarioResult> = r.scenarios.iter().filter(|s| s.scenario == sc).collect();
    let max = series
        .iter()
        .flat_map(|s| s.trials.iter().map(|t| t.offered_pps.max(t.delivered_pps)))
        .fold(1.0f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(file, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{sc}: offered vs delivered (pps)"),
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..max, 0f64..max)?;
    chart
        .configure_mesh()
        .x_desc("offered pps")
        .y_desc("delivered pps")
        .draw()?;
    chart.draw_series(LineSeries::new([(0.0, 0.0), (max, max)], BLACK.mix(0.2)))?;
    for s in series {
        let c = color_of(&s.path);
        let mut pts: Vec<(f64, f64)> = s
            .trials
            .iter()
            .map(|t| (t.offered_pps, t.delivered_pps))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
            .label(s.path.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))?;
    }
    chart.configure_series_labels().border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

fn plot_cdf(r: &BenchResult, scenarios: &[String], file: &Path) -> anyhow::Result<()> {
    let max = r
        .scenarios
        .iter()
        .flat_map(|s| {
            s.at_half_rate
                .cdf
                .iter()
                .filter(|p| p.0 <= 99.9)
                .map(|p| p.1)
        })
        .fold(1.0f64, f64::max)
        * 1.1;
    let root =
        SVGBackend::new(file, (900, 300 * scenarios.len().max(1) as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((scenarios.len().max(1), 1));
    for (area, sc) in areas.iter().zip(scenarios) {
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{sc}: one-way latency at half the zero-loss rate"),
                ("sans-serif", 16),
            )
            .margin(8)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..max, 0f64..100f64)?;
        chart
            .configure_mesh()
            .x_desc("µs (to p99.9)")
            .y_desc("percentile")
            .draw()?;
        for s in r.scenarios.iter().filter(|s| &s.scenario == sc) {
            let c = color_of(&s.path);
            let pts: Vec<(f64, f64)> = s
                .at_half_rate
                .cdf
                .iter()
                .filter(|p| p.0 <= 99.9)
                .map(|p| (p.1, p.0))
                .collect();
            chart
                .draw_series(LineSeries::new(pts, c.stroke_width(2)))?
                .label(s.path.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
        }
        chart.configure_series_labels().border_style(BLACK).draw()?;
    }
    root.present()?;
    Ok(())
}

fn plot_scaling(r: &BenchResult, file: &Path) -> anyhow::Result<()> {
    let max = r
        .scaling
        .iter()
        .map(|s| s.zero_loss_pps)
        .fold(1.0f64, f64::max)
        * 1.2;
    let maxn = r.scaling.iter().map(|s| s.services).max().unwrap_or(10) as f64 * 2.0;
    let root = SVGBackend::new(file, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "S4 zero-loss rate vs number of Services",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((5f64..maxn).log_scale(), 0f64..max)?;
    chart
        .configure_mesh()
        .x_desc("Services")
        .y_desc("zero-loss pps")
        .draw()?;
    let mut ps: Vec<String> = r.scaling.iter().map(|s| s.path.clone()).collect();
    ps.sort();
    ps.dedup();
    for p in ps {
        let c = color_of(&p);
        let pts: Vec<(f64, f64)> = r
            .scaling
            .iter()
            .filter(|s| s.path == p)
            .map(|s| (s.services as f64, s.zero_loss_pps))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
            .label(p.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
        chart.draw_series(pts.into_iter().map(|pt| Circle::new(pt, 4, c.filled())))?;
    }
    chart.configure_series_labels().border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::{Scaling, Trial};

    fn trial(o: f64, d: f64) -> Trial {
        Trial {
            offered_pps: o,
            delivered_pps: d,
            latency_us_p99: 10.0,
            cdf: vec![(50.0, 5.0), (99.0, 10.0), (99.9, 20.0)],
            ..Trial::default()
        }
    }

    #[test]
    fn report_plots_and_summary_from_results() {
        let mut r = BenchResult {
            generator_ceiling_pps: 1e6,
            ..BenchResult::default()
        };
        for (path, z) in [
            ("nodeplane", 800_000.0),
            ("nftables", 400_000.0),
            ("iptables", 350_000.0),
        ] {
            r.scenarios.push(ScenarioResult {
                path: path.into(),
                scenario: "S1".into(),
                zero_loss_pps: z,
                generator_limited: path == "nodeplane",
                full_load: trial(1e6, z),
                at_half_rate: trial(z / 2.0, z / 2.0),
                trials: vec![trial(1e6, z), trial(z, z)],
            });
            r.scaling.push(Scaling {
                path: path.into(),
                services: 10,
                zero_loss_pps: z,
            });
        }
        let dir = tempfile::tempdir().unwrap();
        let s = write(&r, dir.path()).unwrap();
        assert!(s.contains("S1"), "{s}");
        assert!(
            s.contains("2.00"),
            "ratio against the better kernel mode: {s}"
        );
        for f in [
            "results.json",
            "report.md",
            "rate-S1.svg",
            "latency-cdf.svg",
            "scaling.svg",
        ] {
            let p = dir.path().join(f);
            assert!(p.metadata().map(|m| m.len() > 100).unwrap_or(false), "{f}");
        }
        let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
        assert!(md.contains("| S1 | nodeplane | 800000 | yes |"), "{md}");
    }
}
