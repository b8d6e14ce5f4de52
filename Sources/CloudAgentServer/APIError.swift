import CloudAgentCore
import CloudAgentEngine
import CloudAgentSandbox
import Foundation
import Hummingbird
import Logging
import NIOCore

/// An error as the API answers it: `{"error": {"code", "message", …}}` with its status.
public struct APIError: Error, HTTPResponseError, CustomStringConvertible {
    public var status: HTTPResponse.Status
    public var code: String
    public var message: String
    public var details: [String: JSONValue]

    public init(_ status: HTTPResponse.Status, code: String, _ message: String, details: [String: JSONValue] = [:]) {
        self.status = status
        self.code = code
        self.message = message
        self.details = details
    }

    public var description: String { "\(code): \(message)" }

    public static func invalid(field: String, _ message: String) -> APIError {
        APIError(.badRequest, code: "INVALID_REQUEST", "\(field) \(message)", details: ["field": .string(field)])
    }

    public static func from(_ error: ValidationError) -> APIError {
        if error.tooLarge {
            return APIError(.contentTooLarge, code: "PAYLOAD_TOO_LARGE", "\(error.field) \(error.message)", details: ["field": .string(error.field)])
        }
        return invalid(field: error.field, error.message)
    }

    public static let unauthorized = APIError(.unauthorized, code: "UNAUTHORIZED", "a valid bearer token is required (Authorization: Bearer <token>)")
    public static func notFound(_ what: String) -> APIError { APIError(.notFound, code: "NOT_FOUND", "\(what) not found") }
    public static func invalidState(_ message: String) -> APIError { APIError(.conflict, code: "INVALID_STATE", message) }
    public static func executionInProgress(_ id: ExecutionID) -> APIError {
        APIError(
            .conflict, code: "EXECUTION_IN_PROGRESS", "execution \(id) is still active; wait for it or interrupt it",
            details: ["activeExecutionId": .string(id.rawValue)])
    }
    public static let payloadTooLarge = APIError(
        .contentTooLarge, code: "PAYLOAD_TOO_LARGE", "the request body is larger than \(Limits.requestBodyBytes) bytes"
    )
    public static let internalError = APIError(.internalServerError, code: "INTERNAL", "internal error; see the server log")

    /// A domain error as the API answers it.
    public init(_ error: SessionError) {
        switch error {
        case .notFound(let id): self = .notFound("session \(id)")
        case .executionNotFound(let id): self = .notFound("execution \(id)")
        case .invalidState(let message): self = .invalidState(message)
        case .executionInProgress(let id): self = .executionInProgress(id)
        case .runtimeUnavailable(let message):
            self.init(.serviceUnavailable, code: "RUNTIME_UNAVAILABLE", message, details: ["retryable": .bool(true)])
        case .inputNotFound(let id): self = .notFound("input request \(id)")
        case .invalidRequest(let field, let message): self = .invalid(field: field, message)
        case .limitReached(let kind, let limit, let message):
            self.init(.tooManyRequests, code: kind.code, message, details: ["limit": .number(limit), "retryable": .bool(true)])
        }
    }

    /// A session's setup command failed (422 `SETUP_FAILED`).
    public init(_ failure: SetupFailure) {
        self.init(
            .unprocessableContent, code: "SETUP_FAILED", "setup failed: \(failure.command) exited with \(failure.exitCode)",
            details: ["command": .string(failure.command), "exitCode": .number(Double(failure.exitCode)), "outputTail": .string(failure.outputTail)]
        )
    }

    public var body: JSONValue {
        var error = details
        error["code"] = .string(code)
        error["message"] = .string(message)
        return ["error": .object(error)]
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var response = JSONResponse.make(body, status: status)
        if status == .unauthorized { response.headers[.wwwAuthenticate] = "Bearer" }
        return response
    }
}

/// JSON in and out of handlers.
public enum JSONResponse {
    public static func make(_ value: JSONValue, status: HTTPResponse.Status = .ok) -> Response {
        Response(
            status: status,
            headers: [.contentType: "application/json; charset=utf-8"],
            body: ResponseBody(byteBuffer: ByteBuffer(string: JSONText.encode(value)))
        )
    }

    /// Reads a JSON body of at most `Limits.requestBodyBytes`: 413 beyond, 400 when it is not JSON.
    public static func body(of request: Request) async throws -> JSONValue {
        var request = request
        let buffer: ByteBuffer
        do {
            buffer = try await request.collectBody(upTo: Limits.requestBodyBytes)
        } catch let error as any HTTPResponseError where error.status == .contentTooLarge {
            throw APIError.payloadTooLarge
        }
        guard buffer.readableBytes > 0 else { throw APIError.invalid(field: "body", "is empty; a JSON object is required") }
        do {
            return try JSONDecoder().decode(JSONValue.self, from: Data(buffer.readableBytesView))
        } catch {
            throw APIError.invalid(field: "body", "is not valid JSON")
        }
    }
}

/// Turns every error into the contract's shape and never lets one through unlogged or raw.
struct ErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as APIError {
            return try error.response(from: request, context: context)
        } catch StoreError.unavailable(let why) {
            context.logger.warning("the database is unavailable", metadata: ["error": "\(why)", "path": "\(request.uri.path)"])
            return try APIError(
                .serviceUnavailable, code: "STORE_UNAVAILABLE", "the database is unavailable; retry", details: ["retryable": .bool(true)]
            ).response(from: request, context: context)
        } catch let error as SessionError {
            return try APIError(error).response(from: request, context: context)
        } catch let error as ValidationError {
            return try APIError.from(error).response(from: request, context: context)
        } catch let failure as SetupFailure {
            return try APIError(failure).response(from: request, context: context)
        } catch let error as any HTTPResponseError {
            let apiError: APIError =
                switch error.status {
                case .notFound: .notFound("route \(request.method) \(request.uri.path)")
                case .contentTooLarge: .payloadTooLarge
                case .unauthorized: .unauthorized
                case .methodNotAllowed: APIError(.methodNotAllowed, code: "INVALID_REQUEST", "method \(request.method) is not allowed here")
                default:
                    error.status.code < 500
                        ? APIError(error.status, code: "INVALID_REQUEST", error.status.reasonPhrase)
                        : .internalError
                }
            return try apiError.response(from: request, context: context)
        } catch {
            context.logger.error("request failed", metadata: ["error": "\(String(reflecting: error))", "path": "\(request.uri.path)"])
            return try APIError.internalError.response(from: request, context: context)
        }
    }
}
