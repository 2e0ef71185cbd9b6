"""HTTP serving shared by the feature browser (`monoscope serve`) and `monoscope llm-server`:
sockets bound before anything is printed, uvicorn on them, and the request guards (Host
header, sizes, security headers). It sits at the bottom of the package: nothing here imports a
stage."""
