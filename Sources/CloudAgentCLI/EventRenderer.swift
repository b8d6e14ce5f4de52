import CloudAgentCore
import Foundation
import Synchronization

/// Renders events for people: the agent's text as it comes, one line per tool call
/// (`⏺ run: ls → exit 0`), and a line for each runtime and execution change.
final class EventRenderer: Sendable {
    let console: Console
    /// Prefix each line with the event's id (`#12`), for `events` and `stream`.
    let showIds: Bool
    private let executionStarts = Mutex<[String: Date]>([:])

    init(console: Console, showIds: Bool = false) {
        self.console = console
        self.showIds = showIds
    }

    func render(_ event: StreamedEvent) {
        let prefix = "#\(event.id) "
        for (index, line) in lines(for: event).enumerated() {
            guard showIds else {
                console.line(line)
                continue
            }
            console.line((index == 0 ? console.paint(prefix, .dim) : String(repeating: " ", count: prefix.count)) + line)
        }
    }

    func lines(for event: StreamedEvent) -> [String] {
        let c = console
        let data = event.data
        let execution = event.executionId.map { " " + c.paint($0, .dim) } ?? ""
        switch event.type {
        case EventType.agent:
            return agentLines(data)
        case EventType.output:
            let line = data["line"]?.stringValue ?? ""
            let stream = data["stream"]?.stringValue == "stderr" ? "stderr" : "stdout"
            return [c.paint("│ ", .dim) + (stream == "stderr" ? c.paint(line, .yellow) : c.paint(line, .dim))]
        case EventType.runtimeStarted:
            let cold = data["cold"]?.boolValue == true
            return [c.paint("◇ runtime started", .blue) + (cold ? c.paint(" (cold start: workspace restored)", .dim) : "")]
        case EventType.runtimeStopped:
            return [c.paint("◇ runtime stopped: ", .blue) + Self.stopReasonText(data, console: c)]
        case EventType.executionStarted:
            if let id = event.executionId, let at = event.at { executionStarts.withLock { $0[id] = at } }
            let followUp = data["followUp"]?.boolValue == true ? " (follow-up)" : ""
            var lines = [c.paint("▶ execution", .bold) + execution + " started" + followUp]
            if let prompt = data["prompt"]?.stringValue {
                lines.append(c.paint("  prompt: " + Self.oneLine(prompt, limit: 100), .dim))
            }
            return lines
        case EventType.executionQueued:
            let position = data["position"]?.intValue.map { " (position \($0))" } ?? ""
            var lines = [c.paint("… execution", .bold) + execution + " queued" + position]
            if let prompt = data["prompt"]?.stringValue {
                lines.append(c.paint("  prompt: " + Self.oneLine(prompt, limit: 100), .dim))
            }
            return lines
        case EventType.executionCancelled:
            return [c.paint("■ queued execution", .yellow, .bold) + execution + " cancelled before its turn"]
        case EventType.executionRunning:
            return [c.paint("▶ agent running", .dim)]
        case EventType.executionCompleted:
            let facts = ["exit \(data["exitCode"]?.intValue ?? 0)", took(event)].compactMap { $0 }
            return [c.paint("✓ execution completed", .green, .bold) + execution + c.paint(" (" + facts.joined(separator: ", ") + ")", .dim)]
        case EventType.executionFailed:
            let facts = [data["exitCode"]?.intValue.map { "exit \($0)" }, took(event)].compactMap { $0 }
            let error = data["error"]?.stringValue ?? "failed"
            return [
                c.paint("✗ execution failed", .red, .bold) + execution + ": " + error
                    + (facts.isEmpty ? "" : c.paint(" (" + facts.joined(separator: ", ") + ")", .dim))
            ]
        case EventType.executionInterrupted:
            let reason = data["reason"]?.stringValue ?? "unknown"
            return [c.paint("■ execution interrupted", .yellow, .bold) + execution + " (reason: \(reason))"]
        case EventType.executionStuck:
            let since = data["sinceLastProgressMs"]?.doubleValue.map { humanDuration($0 / 1000) } ?? "a while"
            return [c.paint("⚠ no progress for \(since)", .yellow) + c.paint(" (the agent still heartbeats; it is not stopped)", .dim)]
        case EventType.inputRequested:
            let id = data["requestId"]?.stringValue ?? "?"
            let what: String
            if data["kind"]?.stringValue == "question" {
                what = "the agent asks: " + Self.oneLine(data["question"]?.stringValue ?? "?", limit: 200)
            } else if data["kind"]?.stringValue == "budget" {
                // The control plane's own request: the agent is held until it is answered.
                what = "budget: " + Self.oneLine(data["question"]?.stringValue ?? "the session's budget is reached: continue?", limit: 200)
                return [c.paint("? ", .yellow, .bold) + what + c.paint("  \(id) · cloud-agent answer SESSION \(id) allow|deny", .dim)]
            } else {
                let input = data["input"].map { $0["command"]?.stringValue ?? $0.stringValue ?? JSONText.encode($0) }.map {
                    ": " + Self.oneLine($0, limit: 120)
                }
                what = "the agent asks permission to use \(data["tool"]?.stringValue ?? "a tool")" + (input ?? "")
            }
            return [c.paint("? ", .yellow, .bold) + what + c.paint("  \(id) · cloud-agent answer SESSION \(id) …", .dim)]
        case EventType.inputResolved:
            let decision = data["decision"]?.stringValue ?? "?"
            let by = data["by"]?.stringValue ?? "?"
            let answer = data["answer"].map { " " + Self.oneLine($0.stringValue ?? JSONText.encode($0), limit: 80) } ?? ""
            return [c.paint("  ↳ \(decision)", decision == "allow" || decision == "answer" ? .green : .yellow) + answer + c.paint(" (by \(by))", .dim)]
        default:
            let summary = data.filter { $0.key != "raw" }.sorted { $0.key < $1.key }
                .map { "\($0.key)=\(Self.oneLine($0.value.stringValue ?? JSONText.encode($0.value), limit: 80))" }
                .joined(separator: " ")
            return [c.paint("· \(event.type)", .magenta) + (summary.isEmpty ? "" : " " + c.paint(summary, .dim))]
        }
    }

    private func agentLines(_ data: [String: JSONValue]) -> [String] {
        let c = console
        switch data["kind"]?.stringValue {
        case "text":
            return [data["text"]?.stringValue ?? ""]
        case "tool":
            let name = data["name"]?.stringValue ?? "tool"
            let input = Self.oneLine(data["input"]?.stringValue ?? data["input"].map(JSONText.encode) ?? "", limit: 160)
            var outcome: String
            if let exit = data["exitCode"]?.intValue {
                outcome = c.paint("exit \(exit)", exit == 0 ? .green : .red)
            } else {
                let status = data["status"]?.stringValue ?? "done"
                outcome = c.paint(status, status == "error" ? .red : .green)
            }
            if let output = data["output"]?.stringValue?.trimmingCharacters(in: .whitespacesAndNewlines), !output.isEmpty {
                let lines = output.split(separator: "\n", omittingEmptySubsequences: true)
                let first = Self.oneLine(String(lines.first ?? ""), limit: 80)
                let more = lines.count > 1 ? " (+\(lines.count - 1) lines)" : ""
                outcome += c.paint("  ⎿ \(first)\(more)", .dim)
            }
            return [c.paint("⏺ ", .cyan) + c.paint(name, .bold) + ": " + input + " → " + outcome]
        case "error":
            return [c.paint("✗ agent error: ", .red) + (data["message"]?.stringValue ?? "")]
        default:
            return [c.paint(data["message"]?.stringValue ?? data["raw"]?.stringValue ?? "", .dim)]
        }
    }

    /// `4.2s` since the execution's start, when its start was seen.
    private func took(_ event: StreamedEvent) -> String? {
        guard let id = event.executionId, let end = event.at, let start = executionStarts.withLock({ $0[id] }) else { return nil }
        return humanDuration(end.timeIntervalSince(start))
    }

    /// `idle — idle 3.0s ≥ timeout 3s since the last activity at 12:00:01.234`.
    static func stopReasonText(_ reason: [String: JSONValue], console c: Console) -> String {
        let rule = reason["rule"]?.stringValue ?? "unknown"
        var parts: [String] = []
        if let idle = reason["idleMs"]?.intValue {
            let timeout = reason["idleTimeoutMs"]?.intValue.map { " ≥ timeout \(DurationText.format(milliseconds: $0))" } ?? ""
            parts.append("idle \(idle)ms\(timeout)")
        }
        if let last = reason["lastActivityAt"]?.dateValue { parts.append("last activity \(humanTime(last))") }
        if let detail = reason["detail"]?.stringValue, !detail.isEmpty { parts.append(detail) }
        return c.paint("rule \(rule)", .bold) + (parts.isEmpty ? "" : c.paint(" (" + parts.joined(separator: ", ") + ")", .dim))
    }

    /// `text` on one line (newlines shown as ⏎), cut to `limit` characters.
    static func oneLine(_ text: String, limit: Int) -> String {
        let flat = text.replacingOccurrences(of: "\r\n", with: "⏎").replacingOccurrences(of: "\n", with: "⏎")
        return flat.count > limit ? String(flat.prefix(limit - 1)) + "…" : flat
    }
}
