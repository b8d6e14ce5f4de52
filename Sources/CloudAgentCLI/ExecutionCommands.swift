import ArgumentParser
import CloudAgentCore
import Foundation
import NIOCore
import NIOHTTP1
import Synchronization

/// The execution id of a 202 answer.
private func executionId(of answer: APIClient.Answer) throws -> String {
    guard let id = answer.json["executionId"]?.stringValue else {
        throw CLIFailure(message: "the server's answer has no executionId: \(answer.text.prefix(300))", exitCode: ExitStatus.server)
    }
    return id
}

/// The id just before the first event of `execution` (its `execution.started`), to stream it
/// (and the runtime events around it) from there.
private func eventIdBefore(_ execution: String, session: String, api: APIClient) async throws -> Int64 {
    let page = try await api.events(session, fromId: 0, limit: 1, executionId: execution)
    return max(0, (page.events.first?["id"]?.intValue ?? 1) - 1)
}

private func followHint(_ session: String) -> @Sendable () -> String {
    {
        "stopped following; the execution goes on. Follow it again: cloud-agent stream \(session) --until-end · stop it: cloud-agent interrupt \(session)"
    }
}

/// `cloud-agent run`: create + initiate + stream to the end of the execution.
struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Create a session, run its prompt, and stream the execution to its end.",
        discussion: """
            With --json only the events are printed, one JSON object per line. PROMPT `-` reads \
            stdin. Ctrl-C stops following (the execution goes on). \(ExitStatus.summary)
            """
    )

    @OptionGroup var client: ClientOptions
    @OptionGroup var spec: SessionSpecOptions
    @Argument(help: "The prompt (for the scripted agent, a script: say, run, write, sleep, tick, exit; `-` reads stdin).") var prompt: String

    func run() async throws {
        let api = try client.client()
        let console = Console.shared
        let body = try spec.body(prompt: try readPrompt(prompt))
        let created = try await api.send(.POST, "/v1/sessions", body: body, timeout: createTimeout)
        guard let session = created.json["sessionId"]?.stringValue else {
            throw CLIFailure(message: "the server's answer has no sessionId: \(created.text.prefix(300))", exitCode: ExitStatus.server)
        }
        if !client.json {
            let branch = created.json["workBranch"]?.stringValue.map { " · branch \($0)" } ?? ""
            console.line(console.paint("● session ", .bold) + session + console.paint(" · agent \(created.json["agent"]?.stringValue ?? "?")\(branch)", .dim))
        }
        let interrupt = InterruptHandler.install(console: console, message: followHint(session))
        defer { interrupt.cancel() }
        let execution = try executionId(of: try await api.send(.POST, "/v1/sessions/\(APIClient.escape(session))/initiate"))
        let watcher = Watcher(api: api, session: session, console: console, json: client.json)
        let code = try await watcher.followExecution(execution, fromId: 0)
        if !client.json, code == ExitStatus.success {
            console.line(console.paint("follow up: cloud-agent send \(session) PROMPT --wait", .dim))
        }
        if code != ExitStatus.success { throw ExitCode(code) }
    }
}

/// `cloud-agent send`: a follow-up message.
struct SendCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "send",
        abstract: "Send a follow-up prompt to a session (cold-starting its runtime if it was stopped).",
        discussion: """
            Without --wait it prints the new execution and returns. With --wait it streams the \
            execution to its end and exits with its outcome. \(ExitStatus.summary)
            """
    )

    @OptionGroup var client: ClientOptions
    @Argument(help: "The session id (agent_…).") var id: String
    @Argument(help: "The prompt (`-` reads stdin).") var prompt: String
    @Flag(help: "Stream the execution to its end; exit with its outcome.") var wait = false
    @Option(help: "The mode for this message.") var mode: String?
    @Option(help: "The model for this message.") var model: String?
    @Flag(help: "If an execution is active, queue this one behind it (at most 20 wait) instead of failing.") var queue = false

    func run() async throws {
        let api = try client.client()
        let console = Console.shared
        var body: [String: JSONValue] = ["prompt": .string(try readPrompt(prompt))]
        if let mode { body["mode"] = .string(mode) }
        if let model { body["model"] = .string(model) }
        if queue { body["queue"] = true }
        let interrupt = wait ? InterruptHandler.install(console: console, message: followHint(id)) : nil
        defer { interrupt?.cancel() }
        let answer = try await api.send(.POST, "/v1/sessions/\(APIClient.escape(id))/messages", body: .object(body))
        let execution = try executionId(of: answer)
        guard wait else {
            if client.json {
                console.line(answer.line)
            } else if answer.json["status"]?.stringValue == "queued" {
                let position = answer.json["position"]?.intValue.map { " (position \($0))" } ?? ""
                console.line(console.paint("… execution ", .bold) + execution + " queued" + position + ": it starts once those before it end")
                console.line(console.paint("cancel it: cloud-agent executions \(id) \(execution) --cancel", .dim))
            } else {
                console.line(console.paint("▶ execution ", .bold) + execution + " started")
                console.line(console.paint("follow it: cloud-agent stream \(id) --execution \(execution) --until-end", .dim))
            }
            return
        }
        let from = try await eventIdBefore(execution, session: id, api: api)
        let code = try await Watcher(api: api, session: id, console: console, json: client.json).followExecution(execution, fromId: from)
        if code != ExitStatus.success { throw ExitCode(code) }
    }
}

/// `cloud-agent stream`: a session's events, replayed then live.
struct StreamCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stream",
        abstract: "Follow a session's events live (after replaying those after --from) until Ctrl-C.",
        discussion: """
            With --until-end it stops at the end of the session's latest execution (or of the \
            --execution given; with none yet, of the next one) and exits with its outcome. A \
            stream the server drops (slow consumer, restart) is resumed from the last event seen, \
            without duplicates. \(ExitStatus.summary)
            """
    )

    @OptionGroup var client: ClientOptions
    @Argument(help: "The session id (agent_…).") var id: String
    @Option(name: .customLong("from"), help: "Only events with ids above this (default 0: everything).") var from: Int64 = 0
    @Option(name: .customLong("execution"), help: "Only this execution's events.") var execution: String?
    @Option(help: ArgumentHelp("Only these event types, comma-separated (e.g. agent,execution.completed).", valueName: "a,b")) var types: String?
    @Flag(name: .customLong("until-end"), help: "Stop at the end of the latest execution; exit with its outcome.") var untilEnd = false

    func validate() throws {
        if from < 0 { throw ValidationError("--from must be 0 or more") }
    }

    func run() async throws {
        let api = try client.client()
        let console = Console.shared
        let view = try await api.session(id)
        let wanted: Set<String>? = types.map { Set($0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }) }
        if let wanted, wanted.isEmpty { throw CLIFailure.usage("--types names no event type") }
        let watcher = Watcher(api: api, session: id, console: console, json: client.json, showIds: !client.json)
        let show: @Sendable (StreamedEvent) -> Bool = { event in wanted?.contains(event.type) ?? true }

        guard untilEnd else {
            let interrupt = InterruptHandler.install(console: console, message: { nil })
            defer { interrupt.cancel() }
            do {
                try await watcher.watch(StreamQuery(fromId: from, executionId: execution, types: wanted.map { $0.sorted() }), until: { _ in false })
            } catch EventFollower.Ended.sessionDeleted {
                if !client.json { console.line(console.paint("◇ the session was deleted; the stream ended", .blue)) }
            }
            return
        }

        // The execution to wait for: --execution, else the latest, else the next to start.
        let latest = view["latestExecution"]
        let target = execution ?? latest?["executionId"]?.stringValue
        if let target {
            // Already over, and its end is not after --from: nothing will come; report it.
            let ends = try await api.events(id, fromId: 0, limit: 1, executionId: target, types: StreamedEvent.endTypes.sorted())
            if let endJSON = ends.events.first, let end = StreamedEvent(json: endJSON), end.id <= from {
                let code = Watcher.exitCode(for: end, console: console)
                if code != ExitStatus.success { throw ExitCode(code) }
                return
            }
        }
        let interrupt = InterruptHandler.install(console: console, message: { nil })
        defer { interrupt.cancel() }
        // Ask the server for the events that end the wait even when --types leaves them out.
        let serverTypes = wanted.map { $0.union(StreamedEvent.endTypes).union([EventType.executionStarted]).sorted() }
        let waitingFor = Locked<String?>(target)
        let end: StreamedEvent?
        do {
            end = try await watcher.watch(StreamQuery(fromId: from, executionId: execution, types: serverTypes), show: show) { event in
                waitingFor.withLock { target in
                    if target == nil, event.type == EventType.executionStarted { target = event.executionId }
                    return event.isExecutionEnd && event.executionId != nil && event.executionId == target
                }
            }
        } catch EventFollower.Ended.sessionDeleted {
            throw CLIFailure(message: "the session \(id) was deleted before its execution ended", exitCode: ExitStatus.executionFailed)
        }
        guard let end else { throw ExitCode(ExitStatus.executionFailed) }
        let code = Watcher.exitCode(for: end, console: console)
        if code != ExitStatus.success { throw ExitCode(code) }
    }
}

/// `cloud-agent interrupt`.
struct InterruptCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "interrupt",
        abstract: "Interrupt a session's running execution (SIGTERM to the agent, SIGKILL after the stop grace).",
        discussion: ExitStatus.summary
    )

    @OptionGroup var client: ClientOptions
    @Argument(help: "The session id (agent_…).") var id: String

    func run() async throws {
        let answer = try await client.client().send(.POST, "/v1/sessions/\(APIClient.escape(id))/interrupt")
        let console = Console.shared
        if client.json {
            console.line(answer.line)
        } else if answer.json["interrupted"]?.boolValue == true {
            console.line("interrupted \(answer.json["executionId"]?.stringValue ?? "the execution") (it ends as interrupted, reason user)")
        } else {
            console.line("nothing to interrupt: no execution is running")
        }
    }
}

/// `cloud-agent executions`.
struct ExecutionsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "executions",
        abstract: "List a session's executions (or its queue), show one, or cancel a queued one.",
        discussion: ExitStatus.summary
    )

    @OptionGroup var client: ClientOptions
    @Argument(help: "The session id (agent_…).") var id: String
    @Argument(help: "An execution id (exc_…) to show.") var execution: String?
    @Flag(help: "Cancel that execution: it must still be queued.") var cancel = false
    @Flag(help: "List only the queued executions, in the order they run.") var queued = false

    func validate() throws {
        if cancel, execution == nil { throw ValidationError("--cancel needs an execution id") }
    }

    func run() async throws {
        let api = try client.client()
        let console = Console.shared
        let views = HumanViews(console: console)
        if cancel, let execution {
            _ = try await api.send(.DELETE, "/v1/sessions/\(APIClient.escape(id))/executions/\(APIClient.escape(execution))")
            if !client.json { console.line("cancelled queued execution \(execution)") }
        } else if queued {
            let answer = try await api.send(.GET, "/v1/sessions/\(APIClient.escape(id))/executions?status=queued")
            if client.json { console.line(answer.line) } else { views.executionRows(answer.json["executions"]?.arrayItems ?? []).forEach(console.line) }
        } else if let execution {
            let answer = try await api.send(.GET, "/v1/sessions/\(APIClient.escape(id))/executions/\(APIClient.escape(execution))")
            if client.json { console.line(answer.line) } else { views.execution(answer.json).forEach(console.line) }
        } else {
            let answer = try await api.send(.GET, "/v1/sessions/\(APIClient.escape(id))/executions")
            if client.json { console.line(answer.line) } else { views.executionRows(answer.json["executions"]?.arrayItems ?? []).forEach(console.line) }
        }
    }
}

/// `cloud-agent events`: a page of stored events (no live follow; see `stream`).
struct EventsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "events",
        abstract: "Print a session's stored events (ids above --from), one page or --all.",
        discussion: "With --json: one event per line. " + ExitStatus.summary
    )

    @OptionGroup var client: ClientOptions
    @Argument(help: "The session id (agent_…).") var id: String
    @Option(name: .customLong("from"), help: "Only events with ids above this (default 0).") var from: Int64 = 0
    @Option(help: "At most this many (1–1000, default 100).") var limit: Int?
    @Option(name: .customLong("execution"), help: "Only this execution's events.") var execution: String?
    @Option(help: ArgumentHelp("Only these event types, comma-separated.", valueName: "a,b")) var types: String?
    @Flag(help: "Page through every event, not just one page.") var all = false

    func run() async throws {
        let api = try client.client()
        let console = Console.shared
        let renderer = EventRenderer(console: console, showIds: true)
        let typeList = types.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } }
        var fromId = from
        while true {
            let page = try await api.events(id, fromId: fromId, limit: limit ?? (all ? 1000 : nil), executionId: execution, types: typeList)
            for json in page.events {
                guard let event = StreamedEvent(json: json) else { continue }
                if client.json { console.line(event.line) } else { renderer.render(event) }
            }
            let full = page.events.count == (limit ?? (all ? 1000 : 100))
            guard full else { return }
            if all, page.next > fromId {
                fromId = page.next
                continue
            }
            if !client.json { console.line(console.paint("more: cloud-agent events \(id) --from \(page.next)", .dim)) }
            return
        }
    }
}
