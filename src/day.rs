//! `centralino simulate --day`: the staffing advisor's recommendation for
//! each interval of a day whose rate varies, checked by simulating the
//! day through the real router with exactly that staffing.

use anyhow::Result;

/// `--day`'s options.
pub(crate) struct Day {
    /// Calls per second in each interval, in order.
    pub rates: String,
    pub interval_minutes: f64,
    pub target: f64,
    pub days: u32,
    pub aht: f64,
    pub service_level_seconds: f64,
    pub seed: u64,
}

/// Most intervals in one day (a week of 15-minute intervals): bounded work.
const MAX_INTERVALS: usize = 672;

pub(crate) fn simulate_day(d: &Day, json: bool) -> Result<()> {
    let rates: Vec<f64> = d
        .rates
        .split(',')
        .map(|r| {
            r.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0 && *v <= 1_000.0)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "--day: {:?} is not a rate in calls per second (0 to 1000)",
                        r.trim()
                    )
                })
        })
        .collect::<Result<_>>()?;
    anyhow::ensure!(
        !rates.is_empty() && rates.len() <= MAX_INTERVALS,
        "--day takes 1 to {MAX_INTERVALS} rates, one per interval"
    );
    anyhow::ensure!(
        d.interval_minutes.is_finite() && (1.0..=1440.0).contains(&d.interval_minutes),
        "--interval-minutes must be 1 to 1440"
    );
    anyhow::ensure!(
        d.target > 0.0 && d.target < 1.0,
        "--target must be a fraction between 0 and 1 (e.g. 0.8)"
    );
    anyhow::ensure!((1..=100).contains(&d.days), "--days must be 1 to 100");
    anyhow::ensure!(
        d.aht.is_finite() && d.aht > 0.0 && d.aht <= 86_400.0,
        "--aht must be a positive number of seconds"
    );
    anyhow::ensure!(
        d.service_level_seconds.is_finite() && d.service_level_seconds >= 0.0,
        "--service-level-seconds must be zero or more"
    );
    // Bounded work: at most 20 million calls simulated.
    let calls: f64 = rates.iter().sum::<f64>() * d.interval_minutes * 60.0 * f64::from(d.days);
    anyhow::ensure!(
        calls <= 20e6,
        "that is {calls:.0} calls to simulate: fewer --days or lower rates (at most 20 million)"
    );
    let day = centralino_routing::sim::staffed_day(
        &rates,
        d.interval_minutes * 60.0,
        d.aht,
        d.service_level_seconds,
        d.target,
        d.days,
        d.seed,
    );
    let start = |i: usize| {
        let m = (i as f64 * d.interval_minutes).round() as u64;
        format!("+{:02}:{:02}", m / 60, m % 60)
    };
    if json {
        let rows: Vec<String> = day
            .intervals
            .iter()
            .enumerate()
            .map(|(i, s)| {
                format!(
                    "{{\"start\": \"{}\", \"rate\": {:.6}, \"needed\": {}, \"agents\": {}, \"predicted\": {:.6}, \"service_level\": {:.6}, \"offered\": {}}}",
                    start(i), s.rate, s.needed, s.agents, s.predicted, s.reached, s.offered
                )
            })
            .collect();
        println!(
            "{{\"intervals\": [{}], \"service_level\": {:.6}, \"offered\": {}}}",
            rows.join(", "),
            day.service_level,
            day.offered
        );
        return Ok(());
    }
    println!(
        "{:<7} {:>8} {:>7} {:>7} {:>10} {:>8} {:>9}",
        "start", "calls/s", "needed", "staffed", "Erlang C", "reached", "calls"
    );
    for (i, s) in day.intervals.iter().enumerate() {
        println!(
            "{:<7} {:>8.3} {:>7} {:>7} {:>9.1}% {:>7.1}% {:>9}",
            start(i),
            s.rate,
            s.needed,
            s.agents,
            s.predicted * 100.0,
            s.reached * 100.0,
            s.offered
        );
    }
    println!(
        "the day: {:.1}% answered within {} s (target {:.0}%), {} calls over {} day(s)",
        day.service_level * 100.0,
        d.service_level_seconds,
        d.target * 100.0,
        day.offered,
        d.days
    );
    Ok(())
}
