import CloudAgentCore
import CloudAgentEngine
import CloudAgentProtocol
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdWebSocket
import Logging
import NIOWebSocket
import Synchronization

/// `WS /v1/runtime/connect`: where runtimes connect, authenticated by their own secret (not a
/// user token). One task reads the runtime's frames; another writes the control plane's.
struct RuntimeEndpoint {
    let gateway: RuntimeGateway

    func register(on router: Router<AppRequestContext>) {
        router.ws(RouterPath(stringLiteral: RuntimeProtocol.path)) { request, _ in
            guard
                try await gateway.authenticate(
                    session: request.headers[values: HTTPField.Name(RuntimeProtocol.sessionHeader)!].first,
                    secret: request.headers[values: HTTPField.Name(RuntimeProtocol.secretHeader)!].first
                ) != nil
            else { throw APIError.unauthorized }
            return .upgrade([:])
        } onUpgrade: { inbound, outbound, context in
            let headers = context.request.headers
            guard
                let session = try await gateway.authenticate(
                    session: headers[values: HTTPField.Name(RuntimeProtocol.sessionHeader)!].first,
                    secret: headers[values: HTTPField.Name(RuntimeProtocol.secretHeader)!].first
                ), let instanceId = session.runtime.instanceId
            else { return }
            try await serve(session: session.id, instanceId: instanceId, inbound: inbound, outbound: outbound, logger: context.logger)
        }
    }

    /// Serves one runtime connection. A reader task decodes frames into a bounded queue; this
    /// task takes whatever has arrived as one batch and handles it in order: consecutive events
    /// are ingested together (one transaction, one cumulative ack), consecutive heartbeats are
    /// recorded together. A runtime sending faster than ingest keeps up is held back by the
    /// queue's bound (and TCP), and its events are taken in ever larger batches.
    func serve(session: SessionID, instanceId: String, inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter, logger: Logger) async throws {
        var logger = logger
        logger[metadataKey: "sessionId"] = "\(session)"
        let (frames, continuation) = AsyncStream<ControlMessage>.makeStream()
        let connection = RuntimeConnection(sessionId: session, instanceId: instanceId, outgoing: continuation)
        defer { connection.close() }
        let log = logger
        let queue = InboundQueue(limit: Self.queuedFramesLimit)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for await frame in frames { try await outbound.write(.text(ProtocolCoding.encode(frame))) }
                // Cancelled when reading failed (a message over the limit, say): the WebSocket
                // handler sends the close frame with the reason's code.
                if Task.isCancelled { return }
                try await outbound.close(.normalClosure, reason: nil)
            }
            group.addTask {
                do {
                    var greeting = true
                    for try await message in inbound.messages(maxSize: RuntimeProtocol.maxFrameBytes) {
                        guard case .text(let text) = message else { throw ProtocolError("binary frames are not part of the protocol") }
                        // Heartbeats take the fast path; everything else the decoder.
                        let decoded: Result<RuntimeMessage, ProtocolError> =
                            if let heartbeat = HeartbeatFrame.parse(text) {
                                .success(heartbeat)
                            } else {
                                Result { () throws(ProtocolError) in try ProtocolCoding.decodeRuntimeMessage(text) }
                            }
                        switch decoded {
                        case .success(let message):
                            greeting = false
                            guard await queue.push(message) else { return }
                        case .failure(let error) where error.unknownType != nil && !greeting:
                            // A newer runtime's frame: harmless, ignored (the first must be hello).
                            log.debug("frame of an unknown type from the runtime: ignored", metadata: ["type": "\(error.unknownType ?? "")"])
                        case .failure(let error):
                            throw error
                        }
                    }
                    queue.finish(throwing: nil)
                } catch {
                    queue.finish(throwing: error)
                }
            }
            // However this ends, a reader waiting for room in the queue is let go.
            defer { queue.close() }
            var greeted = false
            do {
                while let batch = try await queue.next(max: Self.batchLimit) {
                    var events: [RuntimeEvent] = []
                    var beats: (executionId: String, count: Int)?
                    func flush() async throws {
                        if !events.isEmpty {
                            // In bursts no larger than the session's stream subscribers can take.
                            let limit = gateway.ledger.hub.burstLimit(session)
                            var start = 0
                            while start < events.count {
                                let end = events.count - start <= limit ? events.count : start + limit
                                try await gateway.ingest(Array(events[start..<end]), from: connection)
                                start = end
                            }
                            events.removeAll(keepingCapacity: true)
                        }
                        if let (executionId, count) = beats {
                            await gateway.heartbeat(executionId, count: count, from: connection)
                            beats = nil
                        }
                    }
                    for message in batch {
                        switch message {
                        case .event(let event) where greeted:
                            if beats != nil { try await flush() }
                            events.append(event)
                        case .heartbeat(let executionId, _, _) where greeted:
                            if !events.isEmpty || (beats.map { $0.executionId != executionId } ?? false) { try await flush() }
                            beats = (executionId, (beats?.count ?? 0) + 1)
                        case .hello(_, _, let active, _) where !greeted:
                            try await flush()
                            guard try await gateway.hello(connection, activeExecutionId: active) else { break }
                            greeted = true
                        case .pong:
                            break
                        default:
                            try await flush()
                            throw ProtocolError("unexpected frame before or after hello")
                        }
                    }
                    try await flush()
                }
            } catch let error as ProtocolError {
                log.warning("runtime protocol error; closing the connection", metadata: ["error": "\(error)"])
            }
            log.info("runtime disconnected")
            continuation.finish()
            queue.close()
            try await group.waitForAll()
        }
        gateway.unregister(connection)
    }

    /// Frames read ahead of ingest, at most (then the reader, and TCP, wait).
    static let queuedFramesLimit = 4096
    /// Frames handled as one batch, at most.
    static let batchLimit = 1024
}

/// The frames a runtime sent that are not handled yet: one producer (the socket reader), one
/// consumer (the connection's handler), bounded. The consumer takes everything that has arrived
/// at once; the producer waits while the queue is full.
final class InboundQueue: Sendable {
    private struct State {
        var items: [RuntimeMessage] = []
        var head = 0
        var ended = false
        var failure: (any Error)?
        var closed = false
        var consumer: CheckedContinuation<Void, Never>?
        var producer: CheckedContinuation<Void, Never>?
        var count: Int { items.count - head }
    }

    private let state = Mutex(State())
    private let limit: Int

    init(limit: Int) { self.limit = limit }

    /// Adds a frame, waiting while the queue is full. False once the consumer is gone.
    func push(_ message: RuntimeMessage) async -> Bool {
        while true {
            let (accepted, wake): (Bool?, CheckedContinuation<Void, Never>?) = state.withLock { state in
                if state.closed { return (false, nil) }
                guard state.count < limit else { return (nil, nil) }
                state.items.append(message)
                defer { state.consumer = nil }
                return (true, state.consumer)
            }
            wake?.resume()
            if let accepted { return accepted }
            await withTaskCancellationHandler {
                await withCheckedContinuation { (waiter: CheckedContinuation<Void, Never>) in
                    let now = state.withLock { state -> Bool in
                        if state.closed || state.count < limit { return true }
                        state.producer = waiter
                        return false
                    }
                    if now { waiter.resume() }
                }
            } onCancel: {
                self.close()
            }
        }
    }

    /// No more frames: the socket ended, or reading failed with `error` (raised by `next` once
    /// the frames before it are taken).
    func finish(throwing error: (any Error)?) {
        let wake = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.ended = true
            state.failure = error
            defer { state.consumer = nil }
            return state.consumer
        }
        wake?.resume()
    }

    /// The consumer is gone: a waiting producer is let go, further frames are refused.
    func close() {
        let wake = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.closed = true
            state.items.removeAll()
            state.head = 0
            defer { state.producer = nil }
            return state.producer
        }
        wake?.resume()
    }

    /// Up to `max` frames, waiting for the first; nil after the last one.
    func next(max: Int) async throws -> [RuntimeMessage]? {
        while true {
            enum Step { case batch([RuntimeMessage], CheckedContinuation<Void, Never>?), end((any Error)?), wait }
            let step: Step = state.withLock { state in
                if state.count > 0 {
                    let end = state.head + min(max, state.count)
                    let batch = Array(state.items[state.head..<end])
                    state.head = end
                    if state.head == state.items.count {
                        state.items.removeAll(keepingCapacity: true)
                        state.head = 0
                    } else if state.head > 4096 {
                        state.items.removeFirst(state.head)
                        state.head = 0
                    }
                    defer { state.producer = nil }
                    return .batch(batch, state.producer)
                }
                if state.ended || state.closed { return .end(state.closed ? nil : state.failure) }
                return .wait
            }
            switch step {
            case .batch(let batch, let wake):
                wake?.resume()
                return batch
            case .end(let failure):
                if let failure { throw failure }
                return nil
            case .wait:
                await withCheckedContinuation { (waiter: CheckedContinuation<Void, Never>) in
                    let now = state.withLock { state -> Bool in
                        if state.count > 0 || state.ended || state.closed { return true }
                        state.consumer = waiter
                        return false
                    }
                    if now { waiter.resume() }
                }
            }
        }
    }
}

/// The fast path of the most frequent frame: a heartbeat as runtimes write it, a flat object
/// of `type` ("heartbeat"), `executionId`, `at` and `events` in any order, read without
/// `Codable` (a runtime may send thousands a second). Anything else — escapes in a string,
/// other keys, whitespace, a repeated key, `null` — returns nil and goes through
/// `ProtocolCoding`, which gives the same message for every text this accepts.
public enum HeartbeatFrame {
    public static func parse(_ text: String) -> RuntimeMessage? {
        var text = text
        return text.withUTF8 { bytes -> RuntimeMessage? in
            guard bytes.count >= 2, bytes.count <= 512, bytes.first == UInt8(ascii: "{"), bytes.last == UInt8(ascii: "}") else { return nil }
            var type: String?, executionId: String?, at: Double?, events: Int64?
            var index = 1
            while true {
                guard let (key, afterKey) = string(in: bytes, from: index), afterKey < bytes.count, bytes[afterKey] == UInt8(ascii: ":") else { return nil }
                index = afterKey + 1
                switch key {
                case "type", "executionId":
                    guard let (value, after) = string(in: bytes, from: index) else { return nil }
                    if key == "type" {
                        guard type == nil else { return nil }
                        type = value
                    } else {
                        guard executionId == nil else { return nil }
                        executionId = value
                    }
                    index = after
                case "at":
                    guard at == nil, let (range, after) = number(in: bytes, from: index, fraction: true),
                        let value = Double(slice(bytes, range)), value.isFinite
                    else { return nil }
                    at = value
                    index = after
                case "events":
                    guard events == nil, let (range, after) = number(in: bytes, from: index, fraction: false), let value = Int64(slice(bytes, range)) else {
                        return nil
                    }
                    events = value
                    index = after
                default:
                    return nil
                }
                guard index < bytes.count else { return nil }
                if bytes[index] == UInt8(ascii: "}") { break }
                guard bytes[index] == UInt8(ascii: ",") else { return nil }
                index += 1
            }
            guard index == bytes.count - 1, type == "heartbeat", let executionId, !executionId.isEmpty, let at else { return nil }
            return .heartbeat(executionId: executionId, at: Date(timeIntervalSince1970: at / 1000), events: events ?? 0)
        }
    }

    private static func slice(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> String {
        String(decoding: UnsafeBufferPointer(rebasing: bytes[range]), as: UTF8.self)
    }

    /// A string without escapes or control characters, and the index after its closing quote.
    private static func string(in bytes: UnsafeBufferPointer<UInt8>, from start: Int) -> (String, Int)? {
        guard start < bytes.count, bytes[start] == UInt8(ascii: "\"") else { return nil }
        var index = start + 1
        while index < bytes.count, bytes[index] != UInt8(ascii: "\""), bytes[index] != UInt8(ascii: "\\"), bytes[index] >= 0x20 { index += 1 }
        guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { return nil }
        return (slice(bytes, (start + 1)..<index), index + 1)
    }

    /// A JSON number (`-?digits`, then with `fraction` an optional `.digits` and exponent): its
    /// range and the index after it.
    private static func number(in bytes: UnsafeBufferPointer<UInt8>, from start: Int, fraction: Bool) -> (Range<Int>, Int)? {
        var index = start
        func digits() -> Bool {
            let first = index
            while index < bytes.count, bytes[index] >= UInt8(ascii: "0"), bytes[index] <= UInt8(ascii: "9") { index += 1 }
            return index > first
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: "-") { index += 1 }
        let integerStart = index
        guard digits() else { return nil }
        // JSON allows no leading zeros ("01"); leave such text to the full decoder.
        if bytes[integerStart] == UInt8(ascii: "0"), index - integerStart > 1 { return nil }
        if fraction {
            if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
                index += 1
                guard digits() else { return nil }
            }
            if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
                index += 1
                if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
                guard digits() else { return nil }
            }
        }
        guard index - start <= 40 else { return nil }
        return (start..<index, index)
    }
}
