import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// The web console: `GET /` (its page) and `GET /ui/<file>` (its static files), read once from
/// the module's resources. Open routes: the page holds no data; it calls the public API with
/// the bearer token the user pastes.
struct ConsoleRoutes: Sendable {
    /// No inline script or style, nothing from another origin. `'self'` covers same-origin
    /// `ws:`/`wss:` in Chromium (CSP level 3), which the stream needs.
    static let contentSecurityPolicy =
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        + "connect-src 'self'; manifest-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"

    struct File: Sendable {
        let body: ByteBuffer
        let contentType: String
        /// A strong ETag: the first 16 bytes of the content's SHA-256.
        let etag: String
    }

    let files: [String: File]

    /// Loads every file of `Resources/ui` (a flat directory). The page names its stylesheet and
    /// entry module with `?v=<etag>`, so those two may be cached for a year; every other file
    /// (a module imported by name) is revalidated with its ETag (a 304 when unchanged).
    init(bundle: Bundle = .module) {
        var files: [String: File] = [:]
        let directory = bundle.resourceURL?.appendingPathComponent("ui")
        let names = directory.flatMap { try? FileManager.default.contentsOfDirectory(atPath: $0.path) } ?? []
        for name in names {
            guard let directory, let data = try? Data(contentsOf: directory.appendingPathComponent(name)) else { continue }
            files[name] = Self.file(data, name: name)
        }
        if let index = files["index.html"] {
            var html = String(buffer: index.body)
            for (name, file) in files where name != "index.html" {
                html = html.replacingOccurrences(of: "\"/ui/\(name)\"", with: "\"/ui/\(name)?v=\(file.etag)\"")
            }
            files["index.html"] = Self.file(Data(html.utf8), name: "index.html")
        }
        self.files = files
    }

    static func file(_ data: Data, name: String) -> File {
        let digest = SHA256.hash(data: data).prefix(16).map { String(format: "%02x", $0) }.joined()
        return File(body: ByteBuffer(bytes: data), contentType: contentType(of: name), etag: digest)
    }

    static func contentType(of name: String) -> String {
        switch name.split(separator: ".").last ?? "" {
        case "html": "text/html; charset=utf-8"
        case "css": "text/css; charset=utf-8"
        case "js", "mjs": "text/javascript; charset=utf-8"
        case "svg": "image/svg+xml"
        case "png": "image/png"
        case "json", "webmanifest": "application/json"
        default: "application/octet-stream"
        }
    }

    func register(on router: Router<AppRequestContext>) {
        router.get("/") { request, _ in try serve("index.html", request) }
        router.get("ui/:file") { request, context in
            // Only a plain name of a file loaded at start: nothing can escape `ui/`.
            try serve(context.parameters.get("file") ?? "", request)
        }
    }

    func serve(_ name: String, _ request: Request) throws -> Response {
        guard let file = files[name] else { throw APIError.notFound("console file \(name)") }
        let etag = "\"\(file.etag)\""
        let versioned = request.uri.queryParameters["v"].map { String($0) == file.etag } ?? false
        var headers: HTTPFields = [
            .contentSecurityPolicy: Self.contentSecurityPolicy,
            .eTag: etag,
            .cacheControl: versioned ? "public, max-age=31536000, immutable" : "no-cache",
            .xContentTypeOptions: "nosniff",
            HTTPField.Name("Referrer-Policy")!: "no-referrer",
        ]
        let matches =
            request.headers[.ifNoneMatch].map { value in
                value.split(separator: ",").contains { $0.trimmingCharacters(in: .whitespaces) == etag || $0.trimmingCharacters(in: .whitespaces) == "*" }
            } ?? false
        if matches { return Response(status: .notModified, headers: headers) }
        headers[.contentType] = file.contentType
        return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: file.body))
    }
}
