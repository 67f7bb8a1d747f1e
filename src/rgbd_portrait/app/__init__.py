"""`rgbd-portrait app`: a local web app (Gradio) for every task of one loaded model.

    from rgbd_portrait.app.server import start_app
    app = start_app(RGBDPortraitPipeline.from_pretrained(), port=7860)   # serves until app.close()

`server` starts it (its temporary folder, offline settings, queue and upload limit), `layout` is the page and
which control runs what, `tasks` is what the controls run (the pipeline's tasks on the uploaded files), and
`examples` writes the example inputs. Gradio is the `app` extra: `pip install 'rgbd-portrait[app]'`.
"""
