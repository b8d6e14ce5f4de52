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
