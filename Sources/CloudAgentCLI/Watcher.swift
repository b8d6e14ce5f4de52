import ArgumentParser
import CloudAgentCore
import Foundation
import Synchronization
import UnixSignals

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// The status line shown on a terminal while the agent is silent: how long the execution has
/// run, how long the agent has been quiet, and the age of its last heartbeat (from the session's
/// `latestExecution.lastHeartbeat`, asked about once a second).
final class LiveStatus: Sendable {
    struct State {
        var execution: String?
        var startedAt: Date?
        var running = false
        var lastOutput = ContinuousClock.now
        var lastRefresh: ContinuousClock.Instant?
        var lastHeartbeat: Date?
        var runtimeState: String?
        var frame = 0
    }

    let console: Console
    let api: APIClient
    let session: String
    private let state = Mutex(State())
    static let frames = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"]
    /// Silence this long before the status line shows.
    static let quietAfter = Duration.milliseconds(800)

    init(console: Console, api: APIClient, session: String) {
        self.console = console
        self.api = api
        self.session = session
    }

    /// Notes an event that was shown.
    func saw(_ event: StreamedEvent) {
        state.withLock { state in
            state.lastOutput = .now
            switch event.type {
            case EventType.executionStarted:
                state.execution = event.executionId
                state.startedAt = event.at
                state.running = false
                state.lastHeartbeat = nil
            case EventType.executionRunning:
                state.running = true
            case _ where event.isExecutionEnd && event.executionId == state.execution:
                state.execution = nil
            default:
                break
            }
        }
    }

    /// Redraws the status line every 250 ms until cancelled.
    func run() async {
        guard console.isTerminal else { return }
        while !Task.isCancelled {
            do { try await Task.sleep(for: .milliseconds(250)) } catch { break }
            await tick()
        }
        console.clearStatus()
    }

    private func tick() async {
        let now = ContinuousClock.now
        let (active, silentFor, needsRefresh) = state.withLock { state in
            (state.execution != nil, now - state.lastOutput, state.lastRefresh.map { now - $0 >= .seconds(1) } ?? true)
        }
        guard active, silentFor >= Self.quietAfter else { return }
        if needsRefresh {
            state.withLock { $0.lastRefresh = now }
            if let view = try? await api.session(session) {
                state.withLock { state in
                    state.lastHeartbeat = view["latestExecution"]?["lastHeartbeat"]?.dateValue
                    state.runtimeState = view["runtime"]?["state"]?.stringValue
                }
            }
        }
        let text: String? = state.withLock { state in
            guard state.execution != nil else { return nil }
            state.frame += 1
            let spinner = Self.frames[state.frame % Self.frames.count]
            let elapsed = state.startedAt.map { humanDuration(Date().timeIntervalSince($0)) } ?? "—"
            let quiet = "\(max(1, Int((now - state.lastOutput).seconds.rounded())))s"
            var parts = [state.running ? "agent silent \(quiet)" : "waiting for the agent to start", "elapsed \(elapsed)"]
            if let beat = state.lastHeartbeat {
                parts.append("heartbeat \(humanDuration(Date().timeIntervalSince(beat))) ago")
            } else if state.running {
                parts.append("no heartbeat yet")
            }
            if let runtime = state.runtimeState { parts.append("runtime \(runtime)") }
            return "\(spinner) " + parts.joined(separator: " · ")
        }
        if let text { console.status(text) }
    }
}

/// Prints a session's events as they come (JSON lines, or the human renderer with the live
/// status line on a terminal) until `until` says an event ends the watch.
struct Watcher: Sendable {
    let api: APIClient
    let session: String
    let console: Console
    let json: Bool
    var showIds = false

    /// Returns the event that ended the watch.
    @discardableResult
    func watch(
        _ query: StreamQuery,
        show: @escaping @Sendable (StreamedEvent) -> Bool = { _ in true },
        seen: (@Sendable (StreamedEvent) -> Void)? = nil,
        until: @escaping @Sendable (StreamedEvent) -> Bool
    ) async throws -> StreamedEvent? {
        let renderer = EventRenderer(console: console, showIds: showIds)
        let status = LiveStatus(console: console, api: api, session: session)
        let follower = EventFollower(api: api, session: session)
        let ending = Locked<StreamedEvent?>(nil)
        let json = self.json
        let console = self.console
        let ticker = json ? nil : Task { await status.run() }
        defer { ticker?.cancel() }
        try await follower.follow(query) { event in
            status.saw(event)
            if show(event) {
                if json { console.line(event.line) } else { renderer.render(event) }
            }
            seen?(event)
            guard until(event) else { return .more }
            ending.withLock { $0 = event }
            return .stop
        }
        ticker?.cancel()
        await ticker?.value
        console.clearStatus()
        return ending.withLock { $0 }
    }

    /// Follows to the end of `execution` and turns its outcome into an exit code: 0 completed,
    /// 1 failed, 130 interrupted (the error or reason goes to stderr). On a terminal the agent's
    /// input requests are asked inline (`InlineAnswers`), unless `ask` is false.
    func followExecution(_ execution: String, fromId: Int64, ask: Bool = true) async throws -> Int32 {
        let end: StreamedEvent?
        let inline = ask && InlineAnswers.possible(json: json, console: console) ? InlineAnswers(api: api, session: session, console: console) : nil
        let asking = inline.map { inline in Task { await inline.run() } }
        defer {
            inline?.finish()
            asking?.cancel()
        }
        let seen: (@Sendable (StreamedEvent) -> Void)? =
            if let inline { { event in inline.saw(event) } } else { nil }
        do {
            end = try await watch(StreamQuery(fromId: fromId), seen: seen) { event in
                event.isExecutionEnd && event.executionId == execution
            }
        } catch EventFollower.Ended.sessionDeleted {
            throw CLIFailure(message: "the session \(session) was deleted before execution \(execution) ended", exitCode: ExitStatus.executionFailed)
        }
        guard let end else { return ExitStatus.executionFailed }
        return Self.exitCode(for: end, console: console)
    }

    /// 0 for `execution.completed`, 1 for `execution.failed`, 130 for `execution.interrupted`
    /// (and a queued execution's `execution.cancelled`).
    static func exitCode(for end: StreamedEvent, console: Console) -> Int32 {
        let id = end.executionId ?? "?"
        switch end.type {
        case EventType.executionCompleted:
            return ExitStatus.success
        case EventType.executionInterrupted:
            console.error("execution \(id) was interrupted (reason: \(end.data["reason"]?.stringValue ?? "unknown"))")
            return ExitStatus.interrupted
        case EventType.executionCancelled:
            console.error("queued execution \(id) was cancelled before its turn")
            return ExitStatus.interrupted
        default:
            let exit = end.data["exitCode"]?.intValue.map { " (exit \($0))" } ?? ""
            console.error("error: execution \(id) failed\(exit): \(end.data["error"]?.stringValue ?? "no reason given")")
            return ExitStatus.executionFailed
        }
    }
}

/// Ctrl-C while following: clear the status line, say what goes on, exit 130.
enum InterruptHandler {
    static func install(console: Console, message: @escaping @Sendable () -> String?) -> Task<Void, Never> {
        Task.detached {
            let signals = await UnixSignalsSequence(trapping: .sigint)
            for await _ in signals {
                console.clearStatus()
                if let text = message() { console.error("\n" + text) }
                exit(ExitStatus.interrupted)
            }
        }
    }
}

extension Duration {
    /// The duration in seconds.
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
