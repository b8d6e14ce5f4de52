import CloudAgentCore
import Foundation
import NIOHTTP1
import HTTPTypes
import Logging
import NIOCore
import NIOWebSocket
import Synchronization
import WSClient

/// One event as the API shows it: `{id, sessionId, executionId, type, at, data}`.
struct StreamedEvent: Sendable {
    let id: Int64
    let type: String
    let executionId: String?
    let at: Date?
    let data: [String: JSONValue]
    /// The event as one line of JSON.
    let line: String

    init?(json: JSONValue, text: String? = nil) {
        guard let id = json["id"]?.intValue, let type = json["type"]?.stringValue else { return nil }
        self.id = id
        self.type = type
        executionId = json["executionId"]?.stringValue
        at = json["at"]?.dateValue
        data = json["data"]?.objectValue ?? [:]
        if let text, !text.contains("\n") { line = text } else { line = JSONText.encode(json) }
    }

    init?(text: String) {
        guard let json = try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8)) else { return nil }
        self.init(json: json, text: text)
    }

    /// A queued execution cancelled before its turn ends too.
    static let endTypes: Set<String> = [
        EventType.executionCompleted, EventType.executionFailed, EventType.executionInterrupted, EventType.executionCancelled,
    ]

    /// The event that ends an execution.
    var isExecutionEnd: Bool { Self.endTypes.contains(type) }
}

/// What to ask the stream for.
struct StreamQuery: Sendable {
    var fromId: Int64 = 0
    var executionId: String?
    var types: [String]?

    func path(session: String, fromId: Int64) -> String {
        "/v1/sessions/\(APIClient.escape(session))/stream"
            + APIClient.query([
                ("fromId", String(fromId)), ("executionId", executionId), ("types", types.map { $0.joined(separator: ",") }),
            ])
    }
}

/// Whether to go on after an event.
enum FollowStep: Sendable {
    case more
    case stop
}

/// Follows a session's events over the stream WebSocket (`WS /v1/sessions/{id}/stream`), in
/// id order, each event handed over once:
/// - a close with 4001 (slow consumer) resumes at once from the last id seen;
/// - a dropped connection (or any other close) resumes from the last id seen, with backoff,
///   giving up after `maxOutage` without a working connection (a connection failure);
/// - 4004 (session deleted) ends the follow with `Ended.sessionDeleted`;
/// - an upgrade the server refuses is explained by asking the events route the same question
///   (its error is the answer: 401, 404, 400 naming the bad parameter); when that route
///   answers fine, the server has no stream route and the events are polled instead;
/// - a connection that hangs is abandoned and made again: one whose upgrade does not finish
///   within `handshakeTimeout` (the WebSocket client can hang when the server closes during
///   the upgrade), or one that delivers nothing while the events route shows events it should
///   have delivered, at two checks `stallCheck` apart.
///
/// Each connection runs in its own task; an abandoned one can deliver nothing more (its
/// generation is over), so events are handed over in order by one connection at a time.
struct EventFollower: Sendable {
    let api: APIClient
    let session: String
    /// Where notices go (a reconnect, a fallback): stderr.
    var notice: @Sendable (String) -> Void = { Console.shared.error($0) }
    var maxOutage: Duration = .seconds(60)
    /// How often the polling fallback asks when there was nothing new.
    var pollInterval: Duration = .milliseconds(250)
    /// A WebSocket upgrade taking longer than this is abandoned.
    var handshakeTimeout: Duration = .seconds(5)
    /// How often a silent connection is checked against the events route.
    var stallCheck: Duration = .seconds(5)

    static let slowConsumerCode = 4001
    static let sessionDeletedCode = 4004

    /// Why following ended without the handler asking to stop.
    enum Ended: Error {
        case sessionDeleted
    }

    /// The follow's state, shared by the supervising loop and the connection tasks.
    private final class Progress: Sendable {
        struct State {
            var lastId: Int64
            var stopped = false
            var received = 0
            /// The connection allowed to hand events over.
            var generation = 0
            /// A handler call is under way (a connection is never abandoned during one).
            var handling = false
            var handlerError: (any Error)?
        }
        let state: Mutex<State>
        init(lastId: Int64) { state = Mutex(State(lastId: lastId)) }
        var lastId: Int64 { state.withLock { $0.lastId } }
        var stopped: Bool { state.withLock { $0.stopped } }
        var received: Int { state.withLock { $0.received } }

        func newGeneration() -> Int {
            state.withLock {
                $0.generation += 1; return $0.generation
            }
        }

        /// True when `generation` may hand over the event (new, and its connection current):
        /// then a handler call begins.
        func begin(_ id: Int64, generation: Int) -> Bool {
            state.withLock { state in
                guard generation == state.generation, !state.stopped, id > state.lastId else { return false }
                state.lastId = id
                state.received += 1
                state.handling = true
                return true
            }
        }

        func end(stop: Bool, error: (any Error)? = nil) {
            state.withLock { state in
                state.handling = false
                if stop { state.stopped = true }
                if let error, state.handlerError == nil { state.handlerError = error }
            }
        }

        /// Ends `generation` unless a handler call is under way; true when it was ended.
        func abandon(_ generation: Int) -> Bool {
            state.withLock { state in
                guard state.generation == generation, !state.handling else { return false }
                state.generation += 1
                return true
            }
        }

        func isCurrent(_ generation: Int) -> Bool { state.withLock { $0.generation == generation && !$0.stopped } }
        var handlerError: (any Error)? { state.withLock { $0.handlerError } }
        var handling: Bool { state.withLock { $0.handling } }
    }

    /// One connection's task and what became of it.
    private final class Connection: Sendable {
        let generation: Int
        let upgraded = Locked(false)
        let outcome = Locked<Result<WebSocketCloseFrame?, any Error>?>(nil)
        let task = Locked<Task<Void, Never>?>(nil)

        init(generation: Int) { self.generation = generation }
    }

    /// What the supervising loop made of a connection.
    private enum Supervised {
        case finished(Result<WebSocketCloseFrame?, any Error>)
        case stopped
        case hung(String)
    }

    /// Follows until `handle` answers `.stop`; returns the last id handed over.
    @discardableResult
    func follow(_ query: StreamQuery, handle: @escaping @Sendable (StreamedEvent) async throws -> FollowStep) async throws -> Int64 {
        let progress = Progress(lastId: query.fromId)
        var headers = HTTPFields()
        headers[.authorization] = "Bearer \(api.token)"
        headers[.userAgent] = "cloud-agent-cli"
        let configuration = WebSocketClientConfiguration(
            maxFrameSize: 1 << 22, additionalHeaders: headers, closeTimeout: .seconds(1), autoPing: .enabled(timePeriod: .seconds(30))
        )
        var logger = Logger(label: "cloud-agent-cli.stream")
        logger.logLevel = .critical
        var outageStart: ContinuousClock.Instant?
        var delay = Duration.milliseconds(100)
        while true {
            try Task.checkCancellation()
            let receivedBefore = progress.received
            let url = api.webSocketBaseURL + query.path(session: session, fromId: progress.lastId)
            let connection = Connection(generation: progress.newGeneration())
            let task = Task {
                do {
                    let close = try await WebSocketClient.connect(url: url, configuration: configuration, logger: logger) { inbound, _, _ in
                        connection.upgraded.withLock { $0 = true }
                        for try await message in inbound.messages(maxSize: 1 << 24) {
                            guard progress.isCurrent(connection.generation) else { return }
                            guard case .text(let text) = message, let event = StreamedEvent(text: text) else { continue }
                            guard progress.begin(event.id, generation: connection.generation) else { continue }
                            do {
                                let step = try await handle(event)
                                progress.end(stop: step == .stop)
                                if step == .stop { return }
                            } catch {
                                progress.end(stop: true, error: error)
                                return
                            }
                        }
                    }
                    connection.outcome.withLock { $0 = .success(close) }
                } catch {
                    connection.outcome.withLock { $0 = .failure(error) }
                }
            }
            connection.task.withLock { $0 = task }
            let supervised: Supervised
            do {
                supervised = try await supervise(connection, progress: progress, query: query)
            } catch {
                task.cancel()
                throw error
            }
            if let error = progress.handlerError { throw error }
            var reconnectNotice: String
            switch supervised {
            case .stopped:
                return progress.lastId
            case .hung(let why):
                task.cancel()
                reconnectNotice = "(the stream \(why); reconnecting from event \(progress.lastId))"
            case .finished(.success(let close)):
                switch close.map({ Int(UInt16(webSocketErrorCode: $0.closeCode)) }) {
                case Self.slowConsumerCode:
                    // Too slow for the server: resume at once from what was handled.
                    notice("(the server dropped this stream as too slow; resuming from event \(progress.lastId))")
                    outageStart = nil
                    delay = .milliseconds(100)
                    continue
                case Self.sessionDeletedCode:
                    throw Ended.sessionDeleted
                case let code:
                    reconnectNotice =
                        "(the stream closed\(code.map { " with code \($0)" } ?? "")\(close?.reason.map { ": \($0)" } ?? ""); resuming from event \(progress.lastId))"
                }
            case .finished(.failure(let error as WebSocketClientError)) where error == .webSocketUpgradeFailed:
                // Ask the events route the same question: its error says what is wrong.
                let answer = try await api.sendAllowingErrors(
                    .GET,
                    "/v1/sessions/\(APIClient.escape(session))/events"
                        + APIClient.query([
                            ("fromId", String(progress.lastId)), ("limit", "1"), ("executionId", query.executionId),
                            ("types", query.types.map { $0.joined(separator: ",") }),
                        ]))
                if (400..<500).contains(answer.status) { throw CLIFailure.api(status: answer.status, body: answer.json, text: answer.text) }
                if answer.status < 300 {
                    notice("(this server has no stream route; polling its events instead)")
                    return try await poll(query, progress: progress, handle: handle)
                }
                reconnectNotice = "(the stream was refused; the server answers HTTP \(answer.status); retrying)"
            case .finished(.failure(let error)):
                reconnectNotice = "(the stream dropped: \(error); resuming from event \(progress.lastId))"
            }
            // Reconnect with backoff; give up after maxOutage without getting anywhere.
            if progress.received > receivedBefore {
                outageStart = nil
                delay = .milliseconds(100)
            }
            let now = ContinuousClock.now
            if outageStart == nil {
                outageStart = now
                notice(reconnectNotice)
            } else if let start = outageStart, now - start > maxOutage {
                throw CLIFailure(
                    message: "lost the event stream of \(session) at \(api.baseURL) for over \(maxOutage): \(reconnectNotice)",
                    exitCode: ExitStatus.connection
                )
            }
            try await Task.sleep(for: delay)
            delay = min(delay * 2, .seconds(2))
        }
    }

    /// Watches a connection until it ends, the handler stops, or it hangs.
    private func supervise(_ connection: Connection, progress: Progress, query: StreamQuery) async throws -> Supervised {
        let began = ContinuousClock.now
        var nextCheck = began + stallCheck
        var receivedAtCheck = progress.received
        var behindChecks = 0
        while true {
            if progress.stopped, !progress.handling { return .stopped }
            if let outcome = connection.outcome.value { return progress.stopped ? .stopped : .finished(outcome) }
            let now = ContinuousClock.now
            if !connection.upgraded.value {
                if now - began > handshakeTimeout, progress.abandon(connection.generation) {
                    return .hung("did not open within \(handshakeTimeout)")
                }
            } else if now >= nextCheck {
                nextCheck = now + stallCheck
                let received = progress.received
                if received != receivedAtCheck || progress.handling {
                    behindChecks = 0
                } else if let page = try? await api.events(
                    session, fromId: progress.lastId, limit: 1, executionId: query.executionId, types: query.types
                ), !page.events.isEmpty {
                    // The store has events this connection has not delivered.
                    behindChecks += 1
                    if behindChecks >= 2, progress.abandon(connection.generation) {
                        return .hung("delivered nothing for \(stallCheck * 2) while events were waiting")
                    }
                } else {
                    behindChecks = 0
                }
                receivedAtCheck = received
            }
            try await Task.sleep(for: .milliseconds(25))
        }
    }

    /// The fallback for a server without the stream route: polls the events route.
    private func poll(_ query: StreamQuery, progress: Progress, handle: @escaping @Sendable (StreamedEvent) async throws -> FollowStep) async throws -> Int64 {
        let generation = progress.newGeneration()
        while true {
            let page = try await api.events(session, fromId: progress.lastId, limit: 500, executionId: query.executionId, types: query.types)
            for json in page.events {
                guard let event = StreamedEvent(json: json), progress.begin(event.id, generation: generation) else { continue }
                do {
                    let step = try await handle(event)
                    progress.end(stop: step == .stop)
                    if step == .stop { return progress.lastId }
                } catch {
                    progress.end(stop: true)
                    throw error
                }
            }
            if page.events.count < 500 { try await Task.sleep(for: pollInterval) }
        }
    }
}
