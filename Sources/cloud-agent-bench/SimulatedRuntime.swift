import CloudAgentCore
import CloudAgentProtocol
import Foundation
import HTTPTypes
import Logging
import NIOCore
import NIOWebSocket
import Synchronization
import WSClient

/// What a launched runtime would be given for one session: its session id, instance id and
/// secret, and the execution it will run. Sessions for simulated runtimes are inserted straight
/// into the store (runtime `starting` with a known secret, one pending execution), exactly as a
/// launch leaves them, minus the process.
struct SimulatedRuntimeSeat: Codable, Sendable {
    var sessionId: String
    var instanceId: String
    var secret: String
    var executionId: String

    var id: SessionID { SessionID(rawValue: sessionId)! }

    /// Inserts `count` such sessions (owned by user `local`).
    static func insert(_ count: Int, into store: any SessionStore, prompt: String = "simulated") async throws -> [SimulatedRuntimeSeat] {
        try await withThrowingTaskGroup(of: [SimulatedRuntimeSeat].self) { group in
            let workers = min(8, max(1, count))
            for worker in 0..<workers {
                let share = count / workers + (worker < count % workers ? 1 : 0)
                group.addTask {
                    var seats: [SimulatedRuntimeSeat] = []
                    for _ in 0..<share { seats.append(try await insertOne(into: store, prompt: prompt)) }
                    return seats
                }
            }
            var all: [SimulatedRuntimeSeat] = []
            for try await seats in group { all += seats }
            return all
        }
    }

    private static func insertOne(into store: any SessionStore, prompt: String) async throws -> SimulatedRuntimeSeat {
        let now = Date().truncatedToMilliseconds
        let id = SessionID()
        var session = SessionRecord(id: id, owner: .local, createdAt: now, spec: SessionSpec(prompt: prompt), workBranch: "session/\(id.rawValue)")
        try session.runtime.requestStart(at: now)
        let secret = BearerToken.generate(prefix: "rts_")
        let instanceId = UUID().uuidString.lowercased()
        try session.runtime.recordLaunching(instanceId: instanceId, secretHash: BearerToken.hash(secret), hostNode: nil)
        let execution = Execution(id: ExecutionID(at: now), sessionId: id, prompt: prompt, acceptedAt: now)
        session.initiatedAt = now
        session.activeExecutionId = execution.id
        session.executionCount = 1
        try await store.insertSession(session)
        try await store.commit(
            SessionChange(
                sessionId: id, newExecution: execution,
                events: [
                    NewEvent(executionId: execution.id, type: EventType.executionStarted, at: now, data: ["prompt": .string(prompt), "followUp": false])
                ]))
        return SimulatedRuntimeSeat(sessionId: id.rawValue, instanceId: instanceId, secret: secret, executionId: execution.id.rawValue)
    }
}

/// A simulated runtime: no process and no agent, but the runtime protocol over a real WebSocket
/// on loopback — hello, welcome, execute, `execution.running`, then whatever the benchmark
/// drives (heartbeats, agent events), with acknowledgements tracked.
final class SimulatedRuntime: Sendable {
    let seat: SimulatedRuntimeSeat
    private let outbound: WebSocketOutboundWriter
    private let controls: AsyncStream<ControlMessage>
    private let controlQueue: AsyncStream<ControlMessage>.Continuation
    private let nextSeq = Atomic<Int64>(1)
    private let acks = AckWaiters()
    /// Called with how many more events were acknowledged (for global counters).
    private let onAck: @Sendable (Int64) -> Void

    private init(seat: SimulatedRuntimeSeat, outbound: WebSocketOutboundWriter, onAck: @escaping @Sendable (Int64) -> Void) {
        self.seat = seat
        self.outbound = outbound
        self.onAck = onAck
        (controls, controlQueue) = AsyncStream.makeStream()
    }

    /// Connects to `url` (`ws://…/v1/runtime/connect`), completes the handshake (the execution
    /// is `running` once this calls `body`), runs `body`, then closes the connection.
    static func connect(
        url: String, seat: SimulatedRuntimeSeat, eventLoopGroup: any EventLoopGroup, logger: Logger,
        onAck: @escaping @Sendable (Int64) -> Void = { _ in }, body: @escaping @Sendable (SimulatedRuntime) async throws -> Void
    ) async throws {
        var configuration = WebSocketClientConfiguration()
        configuration.maxFrameSize = RuntimeProtocol.maxFrameBytes
        configuration.additionalHeaders[HTTPField.Name(RuntimeProtocol.sessionHeader)!] = seat.sessionId
        configuration.additionalHeaders[HTTPField.Name(RuntimeProtocol.secretHeader)!] = seat.secret
        try await WebSocketClient.connect(url: url, configuration: configuration, eventLoopGroup: eventLoopGroup, logger: logger) { inbound, outbound, _ in
            let runtime = SimulatedRuntime(seat: seat, outbound: outbound, onAck: onAck)
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask {
                    do {
                        for try await message in inbound.messages(maxSize: RuntimeProtocol.maxFrameBytes) {
                            guard case .text(let text) = message else { continue }
                            try await runtime.received(text)
                        }
                        runtime.connectionEnded(because: "the control plane closed the connection")
                    } catch {
                        runtime.connectionEnded(because: "reading failed: \(error)")
                        throw error
                    }
                }
                do {
                    try await runtime.handshake()
                    try await body(runtime)
                } catch {
                    tasks.cancelAll()
                    throw error
                }
                try? await outbound.close(.normalClosure, reason: nil)
                try await tasks.waitForAll()
            }
        }
    }

    private func received(_ text: String) async throws {
        switch try ProtocolCoding.decodeControlMessage(text) {
        case .ack(let seq):
            let delta = acks.acknowledge(seq)
            if delta > 0 { onAck(delta) }
        case .ping(let nonce):
            try await send(ProtocolCoding.encode(RuntimeMessage.pong(nonce: nonce)))
        case let other:
            controlQueue.yield(other)
        }
    }

    private let endReason = Mutex<String?>(nil)

    private func connectionEnded(because reason: String) {
        endReason.withLock { $0 = $0 ?? reason }
        controlQueue.finish()
        acks.close()
    }

    private func handshake() async throws {
        try await send(
            ProtocolCoding.encode(
                RuntimeMessage.hello(
                    runtimeId: seat.instanceId, protocolVersion: RuntimeProtocol.version, activeExecutionId: nil, lastSeq: 0
                )))
        let controls = self.controls
        let executionId = seat.executionId
        try await withDeadline(30, "welcome and execute for \(seat.sessionId)") {
            var welcomed = false, executing = false
            for await message in controls {
                switch message {
                case .welcome: welcomed = true
                case .execute(let command) where command.executionId == executionId: executing = true
                case .shutdown(let reason): throw BenchFailure("the control plane shut the simulated runtime down: \(reason)")
                default: break
                }
                if welcomed && executing { return }
            }
            throw BenchFailure("the connection of \(executionId) closed during the handshake")
        }
        let seq = try await sendEvent(kind: RuntimeEvent.Kind.running, dataJSON: "{}")
        try await waitForAck(seq, timeoutSeconds: 30)
    }

    // MARK: Frames

    func send(_ text: String) async throws {
        try await outbound.write(.text(text))
    }

    /// Sends one event of the execution; returns its seq. `dataJSON` is the event's data object.
    @discardableResult
    func sendEvent(kind: String, dataJSON: String) async throws -> Int64 {
        let seq = nextSeq.wrappingAdd(1, ordering: .relaxed).oldValue
        let at = Date().millisecondsSince1970
        try await send(
            "{\"type\":\"event\",\"event\":{\"seq\":\(seq),\"executionId\":\"\(seat.executionId)\",\"kind\":\"\(kind)\",\"at\":\(at),\"data\":\(dataJSON)}}")
        return seq
    }

    /// The heartbeat frame of the execution (the control plane stamps heartbeats with its own clock).
    func heartbeatFrame(events: Int64 = 0) -> String {
        "{\"type\":\"heartbeat\",\"executionId\":\"\(seat.executionId)\",\"at\":\(Date().millisecondsSince1970),\"events\":\(events)}"
    }

    /// The highest seq acknowledged so far.
    var acked: Int64 { acks.acked }

    /// Waits until `seq` is acknowledged (or the connection ends).
    func waitForAck(_ seq: Int64) async { await acks.wait(for: seq) }

    func waitForAck(_ seq: Int64, timeoutSeconds: Double) async throws {
        try await withDeadline(timeoutSeconds, "the acknowledgement of event \(seq)") { [self] in
            await waitForAck(seq)
            guard acked >= seq else {
                throw BenchFailure("the connection ended before event \(seq) was acknowledged (acked \(acked)): \(endReason.withLock { $0 } ?? "?")")
            }
        }
    }
}

/// A live-stream subscriber (`WS /v1/sessions/{id}/stream`) that hands each frame, with the
/// monotonic time it arrived, to `onFrame` until the connection ends or `close()` is called.
final class StreamSubscriber: Sendable {
    private let writer = Mutex<WebSocketOutboundWriter?>(nil)

    /// Returns the close code the server sent, if any (4001: too slow, 4004: session deleted).
    @discardableResult
    func run(url: String, token: String, eventLoopGroup: any EventLoopGroup, logger: Logger, onFrame: @escaping @Sendable (String, UInt64) -> Void) async throws
        -> Int?
    {
        var configuration = WebSocketClientConfiguration()
        configuration.maxFrameSize = 1 << 20
        configuration.additionalHeaders[.authorization] = "Bearer \(token)"
        let close = try await WebSocketClient.connect(url: url, configuration: configuration, eventLoopGroup: eventLoopGroup, logger: logger) {
            inbound, outbound, _ in
            self.writer.withLock { $0 = outbound }
            for try await message in inbound.messages(maxSize: 1 << 20) {
                let arrived = Measure.monotonicNanos()
                guard case .text(let text) = message else { continue }
                onFrame(text, arrived)
            }
        }
        switch close?.closeCode {
        case .unknown(let code): return Int(code)
        case .normalClosure: return 1000
        case .goingAway: return 1001
        case nil: return nil
        default: return -1
        }
    }

    func close() async {
        guard let writer = writer.withLock({ $0 }) else { return }
        try? await writer.close(.normalClosure, reason: nil)
    }
}
