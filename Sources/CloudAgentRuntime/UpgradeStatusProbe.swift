import Foundation
import Logging
import NIOCore
import NIOHTTP1
import WSClient

/// The control plane refused this runtime: it answered the WebSocket upgrade with 401, 403 or
/// 404 (an unknown or deleted session, a wrong secret). The runtime exits; it does not retry.
struct ControlPlaneRefusal: Error, CustomStringConvertible {
    static let statuses: Set<Int> = [401, 403, 404]

    var status: Int
    var description: String { "the control plane refused the runtime (HTTP \(status))" }
}

/// A WebSocket upgrade answered with something other than 101 that is not a refusal (a 5xx from
/// a control plane that is starting or failing, a 429, a proxy's answer): retried with backoff.
struct UpgradeDeclined: Error, CustomStringConvertible {
    var status: Int?
    var description: String { "the WebSocket upgrade was declined (\(status.map { "HTTP \($0)" } ?? "status unknown"))" }
}

/// Asks the control plane what its runtime route answers this runtime.
///
/// swift-websocket's `WebSocketClient.connect` reports every answer but 101 as
/// `WebSocketClientError.webSocketUpgradeFailed`, without its status (NIO's upgrade handler hands
/// its not-upgraded callback the channel only). And the status would not tell much anyway:
/// hummingbird-websocket answers every refused handshake with a bare 400, dropping the route's own
/// answer. The same request without the handshake gets the route's answer — 401 for an unknown
/// session or a wrong secret, 5xx when the control plane fails — so after a failed upgrade the
/// runtime sends one plain `GET` of the route with its session and secret headers, reads the
/// status line, and closes the connection.
enum UpgradeStatusProbe {
    /// The answer's status; nil when the URL is not `ws://` (over `wss://` the probe would need
    /// TLS of its own: such a runtime treats the failure as unreachable, and the orphan limit
    /// still ends it).
    static func status(url text: String, headers: [(String, String)], logger: Logger) async throws -> Int? {
        guard let url = URL(string: text), url.scheme == "ws", let host = url.host else { return nil }
        let port = url.port ?? 80
        var fields = HTTPHeaders()
        fields.add(name: "Host", value: url.port.map { "\(host):\($0)" } ?? host)
        fields.add(name: "Connection", value: "close")
        for (name, value) in headers { fields.add(name: name, value: value) }
        let path = (url.path.isEmpty ? "/" : url.path) + (url.query.map { "?\($0)" } ?? "")
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: fields)
        let connection = ClientConnection(StatusChannel(head: head), address: .hostname(host, port: port), logger: logger)
        return try await connection.run()
    }

    struct Closed: Error, CustomStringConvertible {
        var description: String { "the connection closed before an answer" }
    }

    /// An answer that takes longer than this closes the connection (the attempt it belongs to
    /// has given up by then, and must leave no connection behind).
    static let answerTimeout = TimeAmount.milliseconds(2500)

    /// A connection that sends one request and completes with the answer's status.
    private struct StatusChannel: ClientConnectionChannel {
        let head: HTTPRequestHead

        func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<EventLoopFuture<Int>> {
            channel.eventLoop.makeCompletedFuture {
                let status = channel.eventLoop.makePromise(of: Int.self)
                try channel.pipeline.syncOperations.addHTTPClientHandlers()
                try channel.pipeline.syncOperations.addHandler(StatusHandler(head: head, status: status))
                return status.futureResult
            }
        }

        func handle(value: EventLoopFuture<Int>, logger: Logger) async throws -> Int {
            try await value.get()
        }
    }

    private final class StatusHandler: ChannelInboundHandler {
        typealias InboundIn = HTTPClientResponsePart
        typealias OutboundOut = HTTPClientRequestPart

        private let head: HTTPRequestHead
        private let status: EventLoopPromise<Int>
        private var sent = false
        private var answered = false
        private var timeout: Scheduled<Void>?

        init(head: HTTPRequestHead, status: EventLoopPromise<Int>) {
            self.head = head
            self.status = status
        }

        func handlerAdded(context: ChannelHandlerContext) {
            let channel = context.channel
            timeout = context.eventLoop.scheduleTask(in: UpgradeStatusProbe.answerTimeout) { channel.close(promise: nil) }
            if channel.isActive { send(context) }
        }

        func channelActive(context: ChannelHandlerContext) {
            send(context)
            context.fireChannelActive()
        }

        private func send(_ context: ChannelHandlerContext) {
            guard !sent else { return }
            sent = true
            context.write(wrapOutboundOut(.head(head)), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard case .head(let response) = unwrapInboundIn(data) else { return }
            finish(.success(Int(response.status.code)))
            context.close(promise: nil)
        }

        func channelInactive(context: ChannelHandlerContext) {
            finish(.failure(Closed()))
            context.fireChannelInactive()
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            finish(.failure(error))
            context.close(promise: nil)
        }

        private func finish(_ result: Result<Int, any Error>) {
            guard !answered else { return }
            answered = true
            timeout?.cancel()
            status.completeWith(result)
        }
    }
}
