import CloudAgentCore
import Foundation
import NIOHTTP1
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// `run` and `send --wait` on a terminal: the agent's input requests are asked here, one at a
/// time, and answered through the API as `cloud-agent answer` would. A request answered
/// elsewhere meanwhile (the console, a timeout) is said so. Without a terminal on stdin and
/// stdout (or with `--json`) nothing is asked: `cloud-agent answer` does it.
final class InlineAnswers: Sendable {
    let api: APIClient
    let session: String
    let console: Console
    private let requests: AsyncStream<StreamedEvent>
    private let incoming: AsyncStream<StreamedEvent>.Continuation
    /// Requests resolved so far (elsewhere, or replayed from the session's history).
    private let resolved = Mutex<Set<String>>([])

    init(api: APIClient, session: String, console: Console) {
        self.api = api
        self.session = session
        self.console = console
        (requests, incoming) = AsyncStream.makeStream(of: StreamedEvent.self)
    }

    /// Whether requests can be asked here: a terminal on both ends, human output.
    static func possible(json: Bool, console: Console) -> Bool {
        !json && console.isTerminal && isatty(STDIN_FILENO) == 1
    }

    /// Notes a streamed event: an input request is queued to be asked.
    func saw(_ event: StreamedEvent) {
        switch event.type {
        case EventType.inputRequested: incoming.yield(event)
        case EventType.inputResolved:
            if let id = event.data["requestId"]?.stringValue { _ = resolved.withLock { $0.insert(id) } }
        default: break
        }
    }

    /// Asks each request in turn until cancelled.
    func run() async {
        for await request in requests {
            guard !Task.isCancelled else { break }
            await ask(request)
        }
    }

    func finish() { incoming.finish() }

    private func ask(_ event: StreamedEvent) async {
        let data = event.data
        guard let requestId = data["requestId"]?.stringValue, !resolved.withLock({ $0.contains(requestId) }) else { return }
        let choices = data["choices"]?.arrayValue?.compactMap(\.stringValue) ?? []
        let question = data["kind"]?.stringValue == "question"
        let budget = data["kind"]?.stringValue == "budget"
        defer { console.endPrompt() }
        let body: JSONValue?
        if question {
            if !choices.isEmpty {
                console.line("  " + choices.enumerated().map { "\($0.offset + 1)) \($0.element)" }.joined(separator: "  "))
            }
            console.prompt(console.paint("? ", .yellow, .bold) + "answer (a number picks a choice; an empty line declines): ")
            guard let line = await StandardInputLines.shared.next() else { return }
            body = Self.answer(line, choices: choices)
        } else {
            var decided: JSONValue?
            for _ in 0..<3 where decided == nil {
                console.prompt(
                    console.paint("? ", .yellow, .bold)
                        + (budget ? "continue? [y]es, [n]o (stops the agent): " : "allow? [y]es, [n]o, [a]lways for this tool: "))
                guard let line = await StandardInputLines.shared.next() else { break }
                decided = budget ? Self.budgetDecision(line) : Self.decision(line)
            }
            body = decided
        }
        guard let body else {
            console.line(console.paint("  not answered here: cloud-agent answer \(session) \(requestId) …", .dim))
            return
        }
        do {
            let answer = try await api.sendAllowingErrors(
                .POST, "/v1/sessions/\(APIClient.escape(session))/input-requests/\(APIClient.escape(requestId))", body: body)
            switch answer.status {
            case 200: break
            case 409: console.line(console.paint("  already answered elsewhere", .dim))
            default: console.error("could not answer \(requestId): \(answer.json["error"]?["message"]?.stringValue ?? "HTTP \(answer.status)")")
            }
        } catch {
            console.error("could not answer \(requestId): \(error)")
        }
    }

    /// `y`/`yes`, `n`/`no`, `a`/`always`; anything else is asked about again by the caller (nil).
    static func decision(_ line: String) -> JSONValue? {
        switch line.trimmingCharacters(in: .whitespaces).lowercased() {
        case "y", "yes", "allow": ["decision": "allow"]
        case "n", "no", "deny": ["decision": "deny"]
        case "a", "always": ["decision": "allow", "always": true]
        default: nil
        }
    }

    /// A budget request's answer: `y`/`yes`/`continue` goes on, `n`/`no`/`stop` stops the agent;
    /// there is no "always" (each go-ahead raises the budget once); anything else is asked again (nil).
    static func budgetDecision(_ line: String) -> JSONValue? {
        switch line.trimmingCharacters(in: .whitespaces).lowercased() {
        case "y", "yes", "allow", "c", "continue": ["decision": "allow"]
        case "n", "no", "deny", "s", "stop": ["decision": "deny"]
        default: nil
        }
    }

    /// A number picks one of `choices`; other text is the answer; an empty line declines.
    static func answer(_ line: String, choices: [String]) -> JSONValue {
        let text = line.trimmingCharacters(in: .whitespaces)
        if text.isEmpty { return ["decision": "deny"] }
        if let number = Int(text), choices.indices.contains(number - 1) { return ["answer": .string(choices[number - 1])] }
        return ["answer": .string(text)]
    }
}

/// Lines of the CLI's standard input, read on a thread of their own (never on Swift's
/// cooperative pool, whose threads must not block).
final class StandardInputLines: Sendable {
    static let shared = StandardInputLines()
    private let state = Mutex<(started: Bool, ended: Bool, buffered: [String], waiting: CheckedContinuation<String?, Never>?)>((false, false, [], nil))

    /// The next line; nil at the end of input.
    func next() async -> String? {
        await withCheckedContinuation { continuation in
            let ready: String?? = state.withLock { state in
                if !state.started {
                    state.started = true
                    let thread = Thread { [self] in self.read() }
                    thread.start()
                }
                if !state.buffered.isEmpty { return .some(state.buffered.removeFirst()) }
                if state.ended { return .some(nil) }
                state.waiting = continuation
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }

    private func read() {
        while true {
            let line = readLine(strippingNewline: true)
            let waiting: CheckedContinuation<String?, Never>? = state.withLock { state in
                if line == nil { state.ended = true }
                if let waiting = state.waiting {
                    state.waiting = nil
                    return waiting
                }
                if let line { state.buffered.append(line) }
                return nil
            }
            waiting?.resume(returning: line)
            if line == nil { return }
        }
    }
}
