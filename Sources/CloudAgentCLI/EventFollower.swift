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
        if let text, !text.contains("\n") { line = text } else { line = json.compactText }
    }

    init?(text: String) {
        guard let json = try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8)) else { return nil }
        self.init(json: json, text: text)
    }

    static let endTypes: Set<String> = [EventType.executionCompleted, EventType.executionFailed, EventType.executionInterrupted]

    /// The event that ends an execution.
    var isExecutionEnd: Bool { Self.endTypes.contains(type) }
}

/// What to ask the stream for.
struct StreamQuery: Sendable {
    var fromId: Int64 = 0
    var executionId: String?
    var types: [String]?

    func path(session: String, fromId: Int64) -> String {
        "/v1/sessions/\(APIClient.escape(session))/stream" + APIClient.query([
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
///   answers fine, the server has no stream route and the events are polled instead.
struct EventFollower: Sendable {
    let api: APIClient
    let session: String
    /// Where notices go (a reconnect, a fallback): stderr.
    var notice: @Sendable (String) -> Void = { Console.shared.error($0) }
    var maxOutage: Duration = .seconds(60)
    /// How often the polling fallback asks when there was nothing new.
    var pollInterval: Duration = .milliseconds(250)

    static let slowConsumerCode = 4001
    static let sessionDeletedCode = 4004

    /// Why following ended without the handler asking to stop.
    enum Ended: Error {
        case sessionDeleted
    }

    private final class Progress: Sendable {
        struct State {
            var lastId: Int64
            var stopped = false
            var received = 0
        }
        let state: Mutex<State>
        init(lastId: Int64) { state = Mutex(State(lastId: lastId)) }
        var lastId: Int64 { state.withLock { $0.lastId } }
        var stopped: Bool { state.withLock { $0.stopped } }
        var received: Int { state.withLock { $0.received } }
        /// True when the event is new (and records it).
        func accept(_ id: Int64) -> Bool {
            state.withLock { state in
                guard id > state.lastId else { return false }
                state.lastId = id
                state.received += 1
                return true
            }
        }
        func stop() { state.withLock { $0.stopped = true } }
    }

    /// Follows until `handle` answers `.stop`; returns the last id handed over.
    @discardableResult
    func follow(_ query: StreamQuery, handle: @escaping @Sendable (StreamedEvent) async throws -> FollowStep) async throws -> Int64 {
        let progress = Progress(lastId: query.fromId)
        var headers = HTTPFields()
        headers[.authorization] = "Bearer \(api.token)"
        headers[.userAgent] = "cloud-agent-cli"
        let configuration = WebSocketClientConfiguration(maxFrameSize: 1 << 22, additionalHeaders: headers, closeTimeout: .seconds(1))
        var logger = Logger(label: "cloud-agent-cli.stream")
        logger.logLevel = .critical
        var outageStart: ContinuousClock.Instant?
        var delay = Duration.milliseconds(100)
        while true {
            try Task.checkCancellation()
            let receivedBefore = progress.received
            let url = api.webSocketBaseURL + query.path(session: session, fromId: progress.lastId)
            var reconnectNotice: String
            do {
                let close = try await WebSocketClient.connect(url: url, configuration: configuration, logger: logger) { inbound, _, _ in
                    for try await message in inbound.messages(maxSize: 1 << 24) {
                        guard case .text(let text) = message, let event = StreamedEvent(text: text) else { continue }
                        guard progress.accept(event.id) else { continue }
                        if try await handle(event) == .stop {
                            progress.stop()
                            return
                        }
                    }
                }
                if progress.stopped { return progress.lastId }
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
                    reconnectNotice = "(the stream closed\(code.map { " with code \($0)" } ?? "")\(close?.reason.map { ": \($0)" } ?? ""); resuming from event \(progress.lastId))"
                }
            } catch let error as WebSocketClientError where error == .webSocketUpgradeFailed {
                // Ask the events route the same question: its error says what is wrong.
                let answer = try await api.sendAllowingErrors(.GET, "/v1/sessions/\(APIClient.escape(session))/events" + APIClient.query([
                    ("fromId", String(progress.lastId)), ("limit", "1"), ("executionId", query.executionId),
                    ("types", query.types.map { $0.joined(separator: ",") }),
                ]))
                if (400..<500).contains(answer.status) { throw CLIFailure.api(status: answer.status, body: answer.json, text: answer.text) }
                if answer.status < 300 {
                    notice("(this server has no stream route; polling its events instead)")
                    return try await poll(query, progress: progress, handle: handle)
                }
                reconnectNotice = "(the stream was refused; the server answers HTTP \(answer.status); retrying)"
            } catch let error as CLIFailure {
                throw error
            } catch Ended.sessionDeleted {
                throw Ended.sessionDeleted
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                if progress.stopped { return progress.lastId }
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

    /// The fallback for a server without the stream route: polls the events route.
    private func poll(_ query: StreamQuery, progress: Progress, handle: @escaping @Sendable (StreamedEvent) async throws -> FollowStep) async throws -> Int64 {
        while true {
            let page = try await api.events(session, fromId: progress.lastId, limit: 500, executionId: query.executionId, types: query.types)
            for json in page.events {
                guard let event = StreamedEvent(json: json), progress.accept(event.id) else { continue }
                if try await handle(event) == .stop { return progress.lastId }
            }
            if page.events.count < 500 { try await Task.sleep(for: pollInterval) }
        }
    }
}
