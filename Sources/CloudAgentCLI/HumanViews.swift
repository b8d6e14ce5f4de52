import CloudAgentCore
import Foundation

/// Session and execution views, as people read them (`--json` prints the API's own JSON).
struct HumanViews {
    let console: Console

    /// A session view in a few labelled lines.
    func session(_ view: JSONValue) -> [String] {
        let c = console
        let id = view["sessionId"]?.stringValue ?? "?"
        var lines = [c.paint(id, .bold) + c.paint("  agent \(view["agent"]?.stringValue ?? "?")", .dim)]
        func row(_ label: String, _ value: String) {
            lines.append("  " + c.paint(label.padding(toLength: 13, withPad: " ", startingAt: 0), .dim) + value)
        }
        if let mode = view["mode"]?.stringValue { row("mode", mode) }
        if let model = view["model"]?.stringValue { row("model", model) }
        if let repo = view["repo"], let url = repo["url"]?.stringValue {
            row("repo", url + (repo["branch"]?.stringValue.map { " (branch \($0))" } ?? ""))
        }
        if let branch = view["workBranch"]?.stringValue { row("work branch", branch) }
        row("created", humanTime(view["createdAt"]?.dateValue) + (view["initiatedAt"]?.dateValue.map { " · initiated \(humanTime($0))" } ?? " · not initiated"))
        let runtime = view["runtime"] ?? .null
        let state = runtime["state"]?.stringValue ?? "?"
        var runtimeText = c.paint(state, state == "running" ? .green : (state == "stopped" ? .yellow : .blue))
        if state == "running" || state == "starting", let started = runtime["startedAt"]?.dateValue {
            runtimeText += " since \(humanTime(started))"
        }
        if state == "stopped", let reason = runtime["stopReason"]?.objectValue {
            runtimeText += " at \(humanTime(runtime["stoppedAt"]?.dateValue)): " + EventRenderer.stopReasonText(reason, console: c)
        }
        row("runtime", runtimeText)
        if let sandbox = view["sandbox"]?.stringValue {
            row("sandbox", sandbox == "none" ? c.paint("none", .yellow) + " (no isolation: the agent runs as the server's user)" : sandbox)
        }
        let activity = view["activity"] ?? .null
        if let last = activity["lastActivityAt"]?.dateValue {
            var text = "last \(humanTime(last))" + (activity["source"]?.stringValue.map { " (\($0))" } ?? "")
            if let deadline = activity["idleDeadline"]?.dateValue {
                let left = deadline.timeIntervalSinceNow
                text += left > 0 ? " · idle stop in \(humanDuration(left))" : " · idle deadline \(humanTime(deadline))"
            } else if view["activeExecutionId"]?.stringValue != nil {
                text += " · never idle while an execution runs"
            }
            row("activity", text)
        }
        if let idle = view["idleTimeoutMs"]?.doubleValue { row("idle timeout", humanDuration(idle / 1000)) }
        let env = view["envVarNames"]?.arrayItems.compactMap(\.stringValue) ?? []
        let secrets = view["secretNames"]?.arrayItems.compactMap(\.stringValue) ?? []
        if !env.isEmpty { row("env", env.joined(separator: ", ")) }
        if !secrets.isEmpty { row("secrets", secrets.joined(separator: ", ")) }
        let setup = view["setupCommands"]?.arrayItems.compactMap(\.stringValue) ?? []
        for (index, command) in setup.enumerated() { row(index == 0 ? "setup" : "", command) }
        if view["autoCommit"]?.boolValue == true { row("auto-commit", "on") }
        if let callback = view["callback"]?["url"]?.stringValue { row("callback", callback) }
        if view["approvals"]?.stringValue == "ask" { row("approvals", "ask (the agent's permission requests wait for an answer)") }
        if let budget = BudgetText.budget(view["budget"]) { row("budget", budget) }
        if let usage = BudgetText.usage(view["usage"]) { row("usage", usage) }
        if let pending = view["pendingInput"]?.intValue, pending > 0 {
            row("waiting", c.paint("\(pending) input request\(pending == 1 ? "" : "s") wait\(pending == 1 ? "s" : "") for an answer", .yellow))
        }
        if let queued = view["queuedCount"]?.intValue, queued > 0 {
            row("queue", "\(queued) message\(queued == 1 ? "" : "s") wait\(queued == 1 ? "s" : "") for the active execution to end")
        }
        let count = view["executionCount"]?.intValue ?? 0
        if let latest = view["latestExecution"], latest != .null {
            row("executions", "\(count) · latest " + executionSummary(latest))
        } else {
            row("executions", "\(count)")
        }
        return lines
    }

    /// A pending input request, and how to answer it.
    func inputRequest(_ request: JSONValue, session: String) -> [String] {
        let c = console
        let id = request["requestId"]?.stringValue ?? "?"
        var lines: [String] = []
        switch request["kind"]?.stringValue {
        case "question"?:
            lines.append(c.paint("? ", .yellow) + (request["question"]?.stringValue ?? "a question") + c.paint("  \(id)", .dim))
            let choices = request["choices"]?.arrayItems.compactMap(\.stringValue) ?? []
            if !choices.isEmpty { lines.append("  choices: " + choices.joined(separator: " · ")) }
            lines.append(c.paint("  answer: cloud-agent answer \(session) \(id) --text TEXT   (or deny)", .dim))
        case "budget"?:
            lines.append(c.paint("? ", .yellow) + (request["question"]?.stringValue ?? "the session's budget is reached: continue?") + c.paint("  \(id)", .dim))
            let options = request["options"]?.arrayItems ?? []
            let allow = options.first { $0["kind"]?.stringValue?.hasPrefix("allow") == true }?["name"]?.stringValue ?? "continue"
            let deny = options.first { $0["kind"]?.stringValue?.hasPrefix("reject") == true }?["name"]?.stringValue ?? "stop the agent"
            lines.append("  allow: \(allow.lowercased()) · deny: \(deny.lowercased())")
            lines.append(c.paint("  answer: cloud-agent answer \(session) \(id) allow|deny", .dim))
        default:
            let tool = request["tool"]?.stringValue ?? "a tool"
            let input = request["input"].map { $0.stringValue ?? $0["command"]?.stringValue ?? JSONText.encode($0) } ?? ""
            lines.append(c.paint("? ", .yellow) + "permission to use \(tool)" + (input.isEmpty ? "" : ": \(input.prefix(300))") + c.paint("  \(id)", .dim))
            let options = request["options"]?.arrayItems.compactMap { $0["id"]?.stringValue } ?? []
            if !options.isEmpty { lines.append("  options: " + options.joined(separator: " · ")) }
            lines.append(c.paint("  answer: cloud-agent answer \(session) \(id) allow|deny [--always] [--option ID]", .dim))
        }
        if let deadline = request["deadline"]?.dateValue {
            let outcome = request["kind"]?.stringValue == "budget" ? "the agent is stopped without an answer by" : "denied for want of an answer"
            lines.append(c.paint("  \(outcome) \(humanTime(deadline))", .dim))
        }
        return lines
    }

    /// `exc_… completed (exit 0) · 4.2s`.
    func executionSummary(_ execution: JSONValue) -> String {
        let c = console
        let id = execution["executionId"]?.stringValue ?? "?"
        let status = execution["status"]?.stringValue ?? "?"
        let color: Console.Style =
            switch status {
            case "completed": .green
            case "failed": .red
            case "interrupted": .yellow
            default: .blue
            }
        var text = id + " " + c.paint(status, color)
        if let exit = execution["exitCode"]?.intValue { text += " (exit \(exit))" }
        if let started = execution["startedAt"]?.dateValue {
            let end = execution["completedAt"]?.dateValue ?? Date()
            text += c.paint(" · \(humanDuration(end.timeIntervalSince(started)))", .dim)
        }
        return text
    }

    /// An execution in a few labelled lines.
    func execution(_ view: JSONValue) -> [String] {
        let c = console
        var lines = [executionSummary(view)]
        func row(_ label: String, _ value: String) {
            lines.append("  " + c.paint(label.padding(toLength: 13, withPad: " ", startingAt: 0), .dim) + value)
        }
        row("prompt", EventRenderer.oneLine(view["prompt"]?.stringValue ?? "", limit: 200))
        if let mode = view["mode"]?.stringValue { row("mode", mode) }
        if let model = view["model"]?.stringValue { row("model", model) }
        row("accepted", humanTime(view["startedAt"]?.dateValue))
        if let running = view["runningAt"]?.dateValue { row("running", humanTime(running)) }
        if let beat = view["lastHeartbeat"]?.dateValue { row("heartbeat", humanTime(beat)) }
        if let done = view["completedAt"]?.dateValue { row("ended", humanTime(done)) }
        if let error = view["error"]?.stringValue { row("error", c.paint(error, .red)) }
        if let reason = view["interruptReason"]?.stringValue { row("interrupted", reason) }
        let progress = view["progress"] ?? .null
        row("progress", "\(progress["events"]?.intValue ?? 0) agent events" + (progress["lastEventAt"]?.dateValue.map { ", last at \(humanTime($0))" } ?? ""))
        return lines
    }

    /// One line per session: id, agent, runtime state, executions, latest status, created.
    func sessionRows(_ sessions: [JSONValue]) -> [String] {
        guard !sessions.isEmpty else { return [console.paint("no sessions", .dim)] }
        var rows = [["SESSION", "AGENT", "RUNTIME", "EXECS", "LATEST", "CREATED"]]
        for view in sessions {
            rows.append([
                view["sessionId"]?.stringValue ?? "?",
                view["agent"]?.stringValue ?? "?",
                view["runtime"]?["state"]?.stringValue ?? "?",
                String(view["executionCount"]?.intValue ?? 0),
                view["latestExecution"]?["status"]?.stringValue ?? "—",
                humanTime(view["createdAt"]?.dateValue),
            ])
        }
        return table(rows)
    }

    /// One line per execution.
    func executionRows(_ executions: [JSONValue]) -> [String] {
        guard !executions.isEmpty else { return [console.paint("no executions", .dim)] }
        var rows = [["EXECUTION", "STATUS", "EXIT", "STARTED", "TOOK", "PROMPT"]]
        for view in executions {
            let started = view["startedAt"]?.dateValue
            // A queued one has not started: its wait so far is no run time.
            let queued = view["status"]?.stringValue == "queued"
            let took = queued ? "—" : started.map { humanDuration((view["completedAt"]?.dateValue ?? Date()).timeIntervalSince($0)) } ?? "—"
            rows.append([
                view["executionId"]?.stringValue ?? "?",
                (view["status"]?.stringValue ?? "?") + (view["position"]?.intValue.map { " #\($0)" } ?? ""),
                view["exitCode"]?.intValue.map(String.init) ?? "—",
                humanTime(started),
                took,
                EventRenderer.oneLine(view["prompt"]?.stringValue ?? "", limit: 40),
            ])
        }
        return table(rows)
    }

    /// Columns padded to their widest cell; the header dimmed.
    func table(_ rows: [[String]]) -> [String] {
        let widths = (0..<(rows.first?.count ?? 0)).map { column in rows.map { $0[column].count }.max() ?? 0 }
        return rows.enumerated().map { index, row in
            let text = row.enumerated().map { column, cell in
                column == row.count - 1 ? cell : cell.padding(toLength: widths[column], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
            return index == 0 ? console.paint(text, .dim) : text
        }
    }
}
