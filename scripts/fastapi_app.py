"""Dev-only: the FastAPI app both comparison servers share (scripts/fastapi_server.py with
PyTorch, scripts/fastapi_ort_server.py with onnxruntime): `POST /predict` takes the image as a
multipart field `file` or as the raw body, `GET /healthz`. Not part of the product or the tests.

Python because the peer it stands for is FastAPI.
"""

from fastapi import FastAPI, Request, UploadFile


def build_app(classify):
    """The app; `classify(image bytes)` returns the JSON answer."""
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request):
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            upload: UploadFile = form["file"]
            data = await upload.read()
        else:
            data = await request.body()
        return classify(data)

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    return app
