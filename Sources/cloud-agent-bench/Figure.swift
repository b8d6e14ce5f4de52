import CloudAgentCore
import Foundation

/// One measured figure: `{"name", "value", "unit", "baseline", "ratio", "params"}`. `ratio` is
/// value ÷ baseline, both measured in the same run on the same machine.
struct Figure: Sendable, Codable, Equatable {
    var name: String
    var value: Double
    var unit: String
    var baseline: Double?
    var ratio: Double?
    var params: [String: JSONValue]

    init(_ name: String, _ value: Double, unit: String, baseline: Double? = nil, params: [String: JSONValue] = [:]) {
        self.name = name
        self.value = Self.rounded(value)
        self.unit = unit
        self.baseline = baseline.map { Self.rounded($0) }
        if let baseline, baseline != 0, value.isFinite { ratio = Self.rounded(value / baseline, digits: 3) }
        self.params = params
    }

    /// Three decimals for small values, whole numbers for large ones.
    static func rounded(_ value: Double, digits: Int = 3) -> Double {
        guard value.isFinite else { return value }
        if abs(value) >= 1000 { return value.rounded() }
        let scale = pow(10, Double(digits))
        return (value * scale).rounded() / scale
    }

    // MARK: JSON

    var jsonLine: String {
        // Fixed key order (name first) so that the lines read well; params with sorted keys.
        func text(_ string: String) -> String { JSONText.encode(.string(string)) }
        func number(_ value: Double?) -> String { JSONText.encode(value.map(JSONValue.number) ?? .null) }
        let params = JSONText.encode(params)
        return "{\"name\":\(text(name)),\"value\":\(number(value)),\"unit\":\(text(unit)),\"baseline\":\(number(baseline)),"
            + "\"ratio\":\(number(ratio)),\"params\":\(params)}"
    }

    static func parse(line: String) -> Figure? {
        try? JSONDecoder().decode(Figure.self, from: Data(line.utf8))
    }

    // MARK: Goals (the issue's compass)

    /// The figure's name without its store suffix (`.postgres`): the goals are the same on both stores.
    var baseName: String {
        name.hasSuffix(StoreOptions.postgresSuffix) ? String(name.dropLast(StoreOptions.postgresSuffix.count)) : name
    }

    /// The goal of a figure, in words, and whether a measurement meets it.
    static func goal(of figure: Figure) -> (text: String, met: Bool?) {
        switch figure.baseName {
        case "heartbeats.per_second":
            return ("≥ 20,000/s and ≥ 50% of baseline", figure.value >= 20_000 && (figure.ratio ?? 0) >= 0.5)
        case "stream.latency_p99_ms": return ("≤ 5 ms", figure.value <= 5)
        case "stream.peak_events_per_second": return ("≥ 50% of baseline", (figure.ratio ?? 0) >= 0.5)
        case "idle.stop_lag_p99_ms": return ("≤ 100 ms", figure.value <= 100)
        case "idle.stop_lag_max_ms": return ("≤ 1,000 ms", figure.value <= 1000)
        case "idle.false_kills": return ("0", figure.value == 0)
        // Issue 11: another session's slow cold start delays no idle stop by more than 1 s.
        case "idle.stop_lag_max_ms_during_slow_cold_start": return ("≤ 1,000 ms", figure.value <= 1000)
        case "scale.start_seconds": return ("≤ 2 s", figure.value <= 2)
        case "scale.rss_mb": return ("≤ 150 MB", figure.value <= 150)
        case "scale.get_ms": return ("≤ 5 ms", figure.value <= 5)
        case "coldstart.prepare_ms": return ("≤ 300 ms", figure.value <= 300)
        case "coldstart.message_ms": return ("≤ 300 ms", figure.value <= 300)
        default: return ("—", nil)
        }
    }

    // MARK: Text

    static func format(_ value: Double?) -> String {
        guard let value else { return "—" }
        guard value.isFinite else { return "\(value)" }
        if abs(value) >= 1000 { return grouped(Int64(value.rounded())) }
        if value.rounded() == value { return String(Int64(value)) }
        return String(format: "%.3f", value)
    }

    /// 12345 → "12,345".
    static func grouped(_ number: Int64) -> String {
        let digits = String(number.magnitude)
        var out = ""
        for (index, digit) in digits.enumerated() {
            if index > 0, (digits.count - index) % 3 == 0 { out.append(",") }
            out.append(digit)
        }
        return number < 0 ? "-" + out : out
    }

    static func describe(_ params: [String: JSONValue]) -> String {
        params.keys.sorted().map { key in
            let value: String
            switch params[key]! {
            case .string(let text): value = text
            case .number(let number): value = format(number)
            case .bool(let flag): value = String(flag)
            case .null: value = "null"
            default: value = JSONText.encode(params[key]!)
            }
            return "\(key)=\(value)"
        }.joined(separator: " ")
    }

    /// A plain-text table, one row per figure, then each figure's parameters.
    static func table(_ figures: [Figure]) -> String {
        let header = ["figure", "value", "unit", "baseline", "ratio", "goal", "met"]
        let rows = figures.map { figure -> [String] in
            let goal = goal(of: figure)
            return [
                figure.name, format(figure.value), figure.unit, format(figure.baseline), format(figure.ratio), goal.text,
                goal.met.map { $0 ? "yes" : "NO" } ?? "—",
            ]
        }
        let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max() ?? 0 }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }
                .joined(separator: "  ").trimmingCharacters(in: .whitespaces)
        }
        var out = [line(header), line(widths.map { String(repeating: "-", count: $0) })] + rows.map(line)
        out.append("")
        for group in groupedByParams(figures) { out.append("\(group.names.joined(separator: ", ")): \(describe(group.params))") }
        return out.joined(separator: "\n")
    }

    /// Consecutive figures with the same parameters, together.
    static func groupedByParams(_ figures: [Figure]) -> [(names: [String], params: [String: JSONValue])] {
        var groups: [(names: [String], params: [String: JSONValue])] = []
        for figure in figures {
            if let last = groups.last, last.params == figure.params {
                groups[groups.count - 1].names.append(figure.name)
            } else {
                groups.append(([figure.name], figure.params))
            }
        }
        return groups
    }

    /// Each SQLite figure with its PostgreSQL twin (`<name>.postgres`), in the SQLite figures' order.
    static func sideBySide(_ figures: [Figure]) -> [(sqlite: Figure, postgres: Figure)] {
        let postgres = Dictionary(figures.filter { $0.name != $0.baseName }.map { ($0.baseName, $0) }) { _, last in last }
        return figures.filter { $0.name == $0.baseName }.compactMap { figure in postgres[figure.name].map { (figure, $0) } }
    }

    /// A Markdown table (BENCHMARKS.md), then SQLite and PostgreSQL side by side.
    static func markdown(_ figures: [Figure]) -> String {
        var out = ["| figure | value | unit | baseline (same run) | ratio | goal | met |", "|---|---:|---|---:|---:|---|---|"]
        for figure in figures {
            let goal = goal(of: figure)
            out.append(
                "| `\(figure.name)` | \(format(figure.value)) | \(figure.unit) | \(format(figure.baseline)) | \(format(figure.ratio)) | \(goal.text) | \(goal.met.map { $0 ? "yes" : "**no**" } ?? "—") |"
            )
        }
        let pairs = sideBySide(figures)
        if !pairs.isEmpty {
            out.append("")
            out.append("SQLite and PostgreSQL side by side (the same figures above, each against its own store's baseline):")
            out.append("")
            out.append("| figure | SQLite | ratio | PostgreSQL | ratio | unit | goal | met (SQLite / PostgreSQL) |")
            out.append("|---|---:|---:|---:|---:|---|---|---|")
            for (sqlite, postgres) in pairs {
                let goal = goal(of: sqlite)
                func met(_ figure: Figure) -> String { Figure.goal(of: figure).met.map { $0 ? "yes" : "**no**" } ?? "—" }
                out.append(
                    "| `\(sqlite.name)` | \(format(sqlite.value)) | \(format(sqlite.ratio)) | \(format(postgres.value)) | \(format(postgres.ratio)) | \(sqlite.unit) | \(goal.text) | \(met(sqlite)) / \(met(postgres)) |"
                )
            }
        }
        out.append("")
        out.append("Parameters of each figure (as measured):")
        out.append("")
        for group in groupedByParams(figures) {
            out.append("- \(group.names.map { "`\($0)`" }.joined(separator: ", ")): \(describe(group.params))")
        }
        return out.joined(separator: "\n")
    }
}
