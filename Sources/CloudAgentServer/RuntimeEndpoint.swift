import CloudAgentCore
import CloudAgentProtocol
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdWebSocket
import Logging
import NIOWebSocket

/// `WS /v1/runtime/connect`: where runtimes connect, authenticated by their own secret (not a
/// user token). One task reads the runtime's frames; another writes the control plane's.
struct RuntimeEndpoint {
    let service: SessionService

    func register(on router: Router<AppRequestContext>) {
        router.ws(RouterPath(stringLiteral: RuntimeProtocol.path)) { request, _ in
            guard await service.authenticateRuntime(
                session: request.headers[values: HTTPField.Name(RuntimeProtocol.sessionHeader)!].first,
                secret: request.headers[values: HTTPField.Name(RuntimeProtocol.secretHeader)!].first
            ) != nil else { throw APIError.unauthorized }
            return .upgrade([:])
        } onUpgrade: { inbound, outbound, context in
            let headers = context.request.headers
            guard let session = await service.authenticateRuntime(
                session: headers[values: HTTPField.Name(RuntimeProtocol.sessionHeader)!].first,
                secret: headers[values: HTTPField.Name(RuntimeProtocol.secretHeader)!].first
            ), let instanceId = session.runtime.instanceId else { return }
            try await serve(session: session.id, instanceId: instanceId, inbound: inbound, outbound: outbound, logger: context.logger)
        }
    }

    func serve(session: SessionID, instanceId: String, inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter, logger: Logger) async throws {
        var logger = logger
        logger[metadataKey: "sessionId"] = "\(session)"
        let (frames, continuation) = AsyncStream<ControlMessage>.makeStream()
        let connection = RuntimeConnection(sessionId: session, instanceId: instanceId, outgoing: continuation)
        defer { connection.close() }
        let log = logger
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for await frame in frames { try await outbound.write(.text(ProtocolCoding.encode(frame))) }
                // Cancelled when reading failed (a message over the limit, say): the WebSocket
                // handler sends the close frame with the reason's code.
                if Task.isCancelled { return }
                try await outbound.close(.normalClosure, reason: nil)
            }
            var greeted = false
            do {
                for try await message in inbound.messages(maxSize: RuntimeProtocol.maxFrameBytes) {
                    guard case .text(let text) = message else { throw ProtocolError("binary frames are not part of the protocol") }
                    switch try ProtocolCoding.decodeRuntimeMessage(text) {
                    case .hello(_, _, let active, _) where !greeted:
                        guard try await service.runtimeHello(connection, activeExecutionId: active) else { break }
                        greeted = true
                    case .event(let event) where greeted:
                        try await service.ingest(event, from: connection)
                    case .heartbeat(let executionId, _, _) where greeted:
                        await service.heartbeat(executionId, from: connection)
                    case .pong:
                        break
                    default:
                        throw ProtocolError("unexpected frame before or after hello")
                    }
                }
            } catch let error as ProtocolError {
                log.warning("runtime protocol error; closing the connection", metadata: ["error": "\(error)"])
            }
            log.info("runtime disconnected")
            continuation.finish()
            try await group.waitForAll()
        }
        await service.supervisor.unregister(connection)
    }
}
