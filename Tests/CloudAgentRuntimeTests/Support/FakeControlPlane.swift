import CloudAgentTestSupport
import CloudAgentProtocol
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdWebSocket
import Logging
import NIOCore
import Testing

/// A stand-in for the control plane's runtime route: accepts runtime WebSockets, answers
/// hello with welcome, keeps every event it receives (deduplicated by `seq`, counting the
/// duplicates), acknowledges them unless told not to, and lets a test send frames (raw ones
/// too), cut the connection, or refuse upgrades with a status of its choice.
actor FakeControlPlane {
    struct Connection {
        let id: Int
        let sessionHeader: String?
        let secretHeader: String?
        /// Text frames to send; nil closes the connection.
        let outgoing: AsyncStream<String?>.Continuation
    }

    /// A frame from the runtime and when it arrived.
    struct Received {
        let connection: Int
        let message: RuntimeMessage
        let at: ContinuousClock.Instant
    }

    var heartbeatIntervalMs: Int64
    var stopGraceMs: Int64
    /// The welcome's idleTimeoutMs (nil: left out, as older control planes do).
    var idleTimeoutMs: Int64?
    /// The welcome's controlUrls (nil: left out, as a control plane that names no nodes does).
    var controlUrls: [String]?
    /// When set, upgrades are refused (a bare 400, as hummingbird-websocket answers a refused
    /// handshake) and the route without the handshake answers this status: a refusal or an outage.
    private(set) var refusing: HTTPResponse.Status?
    /// Acknowledge events as they arrive; when false they are kept but not made durable.
    var acknowledging = true
    private(set) var port: Int?
    private(set) var connections: [Connection] = []
    private(set) var current: Connection?
    private(set) var received: [Received] = []
    /// The first copy of each event, by seq.
    private(set) var events: [Int64: RuntimeEvent] = [:]
    private(set) var duplicates = 0
    /// The highest seq acknowledged (what a welcome reports).
    private(set) var durableSeq: Int64 = 0

    init(heartbeatIntervalMs: Int64 = 30_000, stopGraceMs: Int64 = 5_000, idleTimeoutMs: Int64? = nil) {
        self.heartbeatIntervalMs = heartbeatIntervalMs
        self.stopGraceMs = stopGraceMs
        self.idleTimeoutMs = idleTimeoutMs
    }

    var url: String { "ws://127.0.0.1:\(port ?? 0)\(RuntimeProtocol.path)" }
    var hellos: [RuntimeMessage] { received.map(\.message).filter { if case .hello = $0 { true } else { false } } }
    var orderedEvents: [RuntimeEvent] { events.keys.sorted().compactMap { events[$0] } }

    func events(of executionId: String) -> [RuntimeEvent] { orderedEvents.filter { $0.executionId == executionId } }

    func ended(_ executionId: String) -> RuntimeEvent? {
        events.values.first { $0.executionId == executionId && $0.kind == RuntimeEvent.Kind.ended }
    }

    func heartbeats(of executionId: String) -> [(at: ContinuousClock.Instant, events: Int64)] {
        received.compactMap { item in
            if case .heartbeat(executionId, _, let events) = item.message { (item.at, events) } else { nil }
        }
    }

    func setAcknowledging(_ value: Bool) { acknowledging = value }

    func setRefusing(_ status: HTTPResponse.Status?) { refusing = status }

    func setControlUrls(_ urls: [String]?) { controlUrls = urls }

    func send(_ message: ControlMessage) {
        current?.outgoing.yield(ProtocolCoding.encode(message))
    }

    /// Sends a text frame as it is (one the protocol may not know).
    func sendRaw(_ text: String) {
        current?.outgoing.yield(text)
    }

    /// Closes the current connection from the server side.
    func closeConnection() {
        current?.outgoing.yield(nil)
    }

    /// Closes every connection (the control plane goes away).
    func closeAllConnections() {
        for connection in connections { connection.outgoing.yield(nil) }
    }

    fileprivate func setPort(_ port: Int?) { self.port = port }

    fileprivate func connect(sessionHeader: String?, secretHeader: String?) -> (Int, AsyncStream<String?>) {
        let (stream, continuation) = AsyncStream.makeStream(of: String?.self)
        let connection = Connection(id: connections.count + 1, sessionHeader: sessionHeader, secretHeader: secretHeader, outgoing: continuation)
        connections.append(connection)
        current = connection
        return (connection.id, stream)
    }

    fileprivate func disconnect(_ id: Int) {
        if current?.id == id { current = nil }
    }

    fileprivate func handle(_ message: RuntimeMessage, on connection: Int) {
        received.append(Received(connection: connection, message: message, at: .now))
        let outgoing = connections.first { $0.id == connection }?.outgoing
        switch message {
        case .hello:
            outgoing?.yield(
                ProtocolCoding.encode(
                    .welcome(
                        ackedSeq: durableSeq, heartbeatIntervalMs: heartbeatIntervalMs, stopGraceMs: stopGraceMs, idleTimeoutMs: idleTimeoutMs,
                        controlUrls: controlUrls
                    )))
        case .event(let event):
            if events[event.seq] == nil {
                events[event.seq] = event
            } else {
                duplicates += 1
            }
            if acknowledging {
                durableSeq = max(durableSeq, event.seq)
                outgoing?.yield(ProtocolCoding.encode(.ack(seq: event.seq)))
            }
        case .heartbeat, .pong:
            break
        }
    }
}

/// Runs a fake control plane on 127.0.0.1 (a free port) for the duration of `body`.
func withFakeControlPlane<T: Sendable>(
    _ plane: FakeControlPlane,
    _ body: @Sendable (FakeControlPlane) async throws -> T
) async throws -> T {
    let server = try await FakeControlPlaneServer.start(plane)
    do {
        let result = try await body(plane)
        await server.stop()
        return result
    } catch {
        await server.stop()
        throw error
    }
}

/// The fake control plane's server on 127.0.0.1: a test may stop it (the control plane goes
/// away, its connections closed) and start it again on the same port (it comes back).
final class FakeControlPlaneServer: Sendable {
    let plane: FakeControlPlane
    private let task: Task<Void, any Error>

    private init(plane: FakeControlPlane, task: Task<Void, any Error>) {
        self.plane = plane
        self.task = task
    }

    /// Starts serving on `port` (0: a free one) and returns once it listens.
    static func start(_ plane: FakeControlPlane, port: Int = 0) async throws -> FakeControlPlaneServer {
        await plane.setPort(nil)
        var logger = Logger(label: "fake-control-plane")
        // Cancelling the server at the end of a test logs errors that mean nothing here.
        logger.logLevel = .critical
        let router = Router()
        // The runtime route without the handshake (what a runtime asks after a failed upgrade):
        // the status the test chose, as the real route answers an unknown session with 401.
        router.get(RouterPath(stringLiteral: RuntimeProtocol.path)) { _, _ -> Response in
            Response(status: await plane.refusing ?? .ok)
        }
        let app = Application(
            router: router,
            // The default frame limit (16 KiB): the runtime fragments longer messages.
            server: .http1WebSocketUpgrade { request, _, _ in
                guard request.path == RuntimeProtocol.path, await plane.refusing == nil else { return .dontUpgrade }
                let session = HTTPField.Name(RuntimeProtocol.sessionHeader).flatMap { request.headerFields[$0] }
                let secret = HTTPField.Name(RuntimeProtocol.secretHeader).flatMap { request.headerFields[$0] }
                return .upgrade([:]) { inbound, outbound, _ in
                    let (id, outgoing) = await plane.connect(sessionHeader: session, secretHeader: secret)
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        group.addTask {
                            for await frame in outgoing {
                                guard let frame else { return }
                                try await outbound.write(.text(frame))
                            }
                        }
                        group.addTask {
                            for try await message in inbound.messages(maxSize: RuntimeProtocol.maxFrameBytes) {
                                guard case .text(let text) = message else { continue }
                                await plane.handle(try ProtocolCoding.decodeRuntimeMessage(text), on: id)
                            }
                        }
                        _ = try await group.next()
                        group.cancelAll()
                    }
                    await plane.disconnect(id)
                }
            },
            configuration: .init(address: .hostname("127.0.0.1", port: port)),
            onServerRunning: { channel in await plane.setPort(channel.localAddress?.port) },
            logger: logger
        )
        let task = Task { try await app.runService(gracefulShutdownSignals: []) }
        do {
            try await eventually(within: 30, "the fake control plane to listen") { await plane.port != nil }
        } catch {
            task.cancel()
            throw error
        }
        return FakeControlPlaneServer(plane: plane, task: task)
    }

    /// Closes its connections and stops listening; returns once the server has stopped.
    func stop() async {
        await plane.closeAllConnections()
        task.cancel()
        _ = await task.result
    }
}
