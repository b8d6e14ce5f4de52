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
/// duplicates), acknowledges them unless told not to, and lets a test send frames or cut the
/// connection.
actor FakeControlPlane {
    struct Connection {
        let id: Int
        let sessionHeader: String?
        let secretHeader: String?
        let outgoing: AsyncStream<ControlMessage?>.Continuation
    }

    /// A frame from the runtime and when it arrived.
    struct Received {
        let connection: Int
        let message: RuntimeMessage
        let at: ContinuousClock.Instant
    }

    var heartbeatIntervalMs: Int64
    var stopGraceMs: Int64
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

    init(heartbeatIntervalMs: Int64 = 30_000, stopGraceMs: Int64 = 5_000) {
        self.heartbeatIntervalMs = heartbeatIntervalMs
        self.stopGraceMs = stopGraceMs
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

    func send(_ message: ControlMessage) {
        current?.outgoing.yield(message)
    }

    /// Closes the current connection from the server side.
    func closeConnection() {
        current?.outgoing.yield(nil)
    }

    fileprivate func setPort(_ port: Int?) { self.port = port }

    fileprivate func connect(sessionHeader: String?, secretHeader: String?) -> (Int, AsyncStream<ControlMessage?>) {
        let (stream, continuation) = AsyncStream.makeStream(of: ControlMessage?.self)
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
            outgoing?.yield(.welcome(ackedSeq: durableSeq, heartbeatIntervalMs: heartbeatIntervalMs, stopGraceMs: stopGraceMs))
        case .event(let event):
            if events[event.seq] == nil {
                events[event.seq] = event
            } else {
                duplicates += 1
            }
            if acknowledging {
                durableSeq = max(durableSeq, event.seq)
                outgoing?.yield(.ack(seq: event.seq))
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
    var logger = Logger(label: "fake-control-plane")
    // Cancelling the server at the end of a test logs errors that mean nothing here.
    logger.logLevel = .critical
    let app = Application(
        router: Router(),
        // The default frame limit (16 KiB): the runtime fragments longer messages.
        server: .http1WebSocketUpgrade { request, _, _ in
            guard request.path == RuntimeProtocol.path else { return .dontUpgrade }
            let session = HTTPField.Name(RuntimeProtocol.sessionHeader).flatMap { request.headerFields[$0] }
            let secret = HTTPField.Name(RuntimeProtocol.secretHeader).flatMap { request.headerFields[$0] }
            return .upgrade([:]) { inbound, outbound, _ in
                let (id, outgoing) = await plane.connect(sessionHeader: session, secretHeader: secret)
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        for await message in outgoing {
                            guard let message else { return }
                            try await outbound.write(.text(ProtocolCoding.encode(message)))
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
        configuration: .init(address: .hostname("127.0.0.1", port: 0)),
        onServerRunning: { channel in await plane.setPort(channel.localAddress?.port) },
        logger: logger
    )
    return try await withThrowingTaskGroup(of: Void.self, returning: T.self) { group in
        group.addTask { try await app.runService(gracefulShutdownSignals: []) }
        defer { group.cancelAll() }
        try await eventually(within: 30, "the fake control plane to listen") { await plane.port != nil }
        return try await body(plane)
    }
}
