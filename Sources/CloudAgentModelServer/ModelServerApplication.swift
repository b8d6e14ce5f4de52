import CloudAgentCore
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore

/// Where the model server listens.
public struct ModelServerConfiguration: Sendable {
    public var host: String
    /// 0 picks a free port.
    public var port: Int

    public init(host: String = "127.0.0.1", port: Int = 0) {
        self.host = host
        self.port = port
    }
}

/// The scripted model server: the Anthropic Messages API and the OpenAI Responses API, both
/// streaming, answered from `model`'s script. `onServerRunning` gets the bound port.
public func buildModelServerApplication(
    model: ScriptedModel,
    configuration: ModelServerConfiguration = .init(),
    logger: Logger = Logger(label: "cloud-agent-model-server"),
    onServerRunning: @escaping @Sendable (Int) async -> Void = { _ in }
) -> some ApplicationProtocol {
    Application(
        router: buildModelServerRouter(model: model),
        configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "cloud-agent-model-server"),
        onServerRunning: { channel in await onServerRunning(channel.localAddress?.port ?? configuration.port) },
        logger: logger
    )
}

/// The routes: `/v1/messages` (+ `count_tokens`), `/v1/responses`, `/v1/models`, each also
/// without the `/v1` prefix; `GET /requests` (the record); `GET /healthz`; any `HEAD` is 200; any
/// other path is a recorded 404.
public func buildModelServerRouter(model: ScriptedModel) -> Router<BasicRequestContext> {
    let router = Router()
    ModelController(model: model).addRoutes(to: router)
    return router
}

struct ModelController: Sendable {
    let model: ScriptedModel
    /// Agents send their whole conversation every turn.
    static let maxBodyBytes = 256 << 20

    func addRoutes(to router: Router<BasicRequestContext>) {
        for prefix in ["/v1", ""] {
            router.post("\(prefix)/messages") { request, _ in try await modelTurn(request, api: .anthropicMessages) }
            router.post("\(prefix)/messages/count_tokens") { request, _ in try await countTokens(request) }
            router.post("\(prefix)/responses") { request, _ in try await modelTurn(request, api: .openAIResponses) }
            router.get("\(prefix)/models") { request, _ in
                await model.recordOther(method: "GET", path: request.uri.description, reply: "models")
                return json(.ok, Self.modelList)
            }
            router.get("\(prefix)/models/:id") { request, context in
                await model.recordOther(method: "GET", path: request.uri.description, reply: "models")
                return json(.ok, Self.modelEntry(context.parameters.get("id") ?? "scripted"))
            }
        }
        router.get("/requests") { _, _ in
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            let data = try encoder.encode(await model.requests)
            return Response(status: .ok, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
        }
        router.get("/healthz") { _, _ in json(.ok, ["status": "ok"]) }
        // The router does not fall back from `/v1/…` to a root wildcard, so each gets its own.
        for wildcard in ["**", "/v1/**"] {
            // Connectivity probes (Claude Code's `HEAD /api/hello`, …).
            router.head(RouterPath(wildcard)) { request, _ in
                await model.recordOther(method: "HEAD", path: request.uri.description, reply: "probe")
                return Response(status: .ok)
            }
            for method in [HTTPRequest.Method.get, .post, .put, .delete, .patch] {
                router.on(RouterPath(wildcard), method: method) { request, _ in
                    await model.recordOther(method: method.rawValue, path: request.uri.description, reply: "not-found")
                    return json(.notFound, ["error": ["type": "not_found_error", "message": .string("no route \(method.rawValue) \(request.uri.path)")]])
                }
            }
        }
    }

    func modelTurn(_ request: Request, api: ModelAPI) async throws -> Response {
        let path = request.uri.description
        let modelRequest: ModelRequest
        do {
            let buffer = try await request.body.collect(upTo: Self.maxBodyBytes)
            let body: JSONValue
            do { body = try JSONText.decode(Data(buffer.readableBytesView)) } catch {
                throw RequestError("the body is not JSON (content-encoding: \(request.headers[.contentEncoding] ?? "none"))")
            }
            switch api {
            case .anthropicMessages:
                modelRequest = try ModelRequest(
                    anthropic: body, conversationID: header(request, "x-claude-code-session-id"), bodyBytes: buffer.readableBytes
                )
            case .openAIResponses:
                modelRequest = try ModelRequest(
                    openAI: body, conversationID: header(request, "thread-id") ?? header(request, "session-id"), bodyBytes: buffer.readableBytes
                )
            }
        } catch let error as RequestError {
            await model.recordOther(method: "POST", path: path, api: api, reply: "invalid")
            return errorResponse(ScriptedError(status: 400, message: error.message), api: api)
        }
        let reply = await model.answer(modelRequest, method: "POST", path: path)
        switch reply {
        case .failure(let error, let delay):
            try await Task.sleep(for: delay)
            guard error.inStream, modelRequest.stream else { return errorResponse(error, api: api) }
            let events =
                switch api {
                case .anthropicMessages: AnthropicMessagesWire.failureEvents(error, model: modelRequest.model, inputTokens: modelRequest.inputTokens)
                case .openAIResponses: OpenAIResponsesWire.failureEvents(error, model: modelRequest.model, inputTokens: modelRequest.inputTokens)
                }
            return stream(events, chunkDelay: .zero, api: api)
        case .message(let message):
            try await Task.sleep(for: message.delay)
            if modelRequest.stream {
                let events =
                    switch api {
                    case .anthropicMessages: AnthropicMessagesWire.events(message, model: modelRequest.model, inputTokens: modelRequest.inputTokens)
                    case .openAIResponses: OpenAIResponsesWire.events(message, model: modelRequest.model, inputTokens: modelRequest.inputTokens)
                    }
                return stream(events, chunkDelay: message.chunkDelay, api: api)
            }
            let body =
                switch api {
                case .anthropicMessages: AnthropicMessagesWire.message(message, model: modelRequest.model, inputTokens: modelRequest.inputTokens)
                case .openAIResponses: OpenAIResponsesWire.response(message, model: modelRequest.model, inputTokens: modelRequest.inputTokens)
                }
            return json(.ok, body, requestIDHeader: api)
        }
    }

    func countTokens(_ request: Request) async throws -> Response {
        let buffer = try await request.body.collect(upTo: Self.maxBodyBytes)
        await model.recordOther(method: "POST", path: request.uri.description, api: .anthropicMessages, reply: "count_tokens")
        return json(.ok, ["input_tokens": .number(Double(max(1, buffer.readableBytes / 4)))])
    }

    func header(_ request: Request, _ name: String) -> String? {
        HTTPField.Name(name).flatMap { request.headers[$0] }
    }

    func errorResponse(_ error: ScriptedError, api: ModelAPI) -> Response {
        let body =
            switch api {
            case .anthropicMessages: AnthropicMessagesWire.errorBody(error)
            case .openAIResponses: OpenAIResponsesWire.errorBody(error)
            }
        var response = json(HTTPResponse.Status(code: error.status), body, requestIDHeader: api)
        if let field = HTTPField.Name("x-should-retry") { response.headers[field] = error.retryable ? "true" : "false" }
        return response
    }

    /// Writes the events as server-sent events, `chunkDelay` apart.
    func stream(_ events: [ServerSentEvent], chunkDelay: Duration, api: ModelAPI) -> Response {
        var headers: HTTPFields = [.contentType: "text/event-stream", .cacheControl: "no-cache"]
        addRequestID(to: &headers, api: api)
        return Response(
            status: .ok, headers: headers,
            body: ResponseBody { writer in
                for (number, event) in events.enumerated() {
                    if number > 0, chunkDelay > .zero { try await Task.sleep(for: chunkDelay) }
                    try await writer.write(ByteBuffer(string: event.encoded))
                }
                try await writer.finish(nil)
            })
    }

    func json(_ status: HTTPResponse.Status, _ value: JSONValue, requestIDHeader api: ModelAPI? = nil) -> Response {
        var headers: HTTPFields = [.contentType: "application/json"]
        if let api { addRequestID(to: &headers, api: api) }
        return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(string: JSONText.encode(value))))
    }

    func addRequestID(to headers: inout HTTPFields, api: ModelAPI) {
        let name = api == .anthropicMessages ? "request-id" : "x-request-id"
        if let field = HTTPField.Name(name) { headers[field] = WireID.make("req_") }
    }

    static func modelEntry(_ id: String) -> JSONValue {
        [
            "id": .string(id), "object": "model", "type": "model", "display_name": "Scripted model",
            "created": 0, "created_at": "1970-01-01T00:00:00Z", "owned_by": "cloud-agent",
        ]
    }

    static let modelList: JSONValue = [
        "object": "list", "data": [modelEntry("scripted")], "has_more": false, "first_id": "scripted", "last_id": "scripted",
    ]
}
